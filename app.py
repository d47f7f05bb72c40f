"""MLX Quant Lab dashboard: `./lab dashboard` (or `streamlit run app.py` with the environment set up)."""
import streamlit as st

st.set_page_config(page_title="MLX Quant Lab", layout="wide")
navigation = st.navigation([
    st.Page("views/overview.py", title="Overview", default=True),
    st.Page("views/quantize.py", title="Quantize & evaluate"),
    st.Page("views/tradeoffs.py", title="Trade-offs"),
    st.Page("views/sensitivity.py", title="Sensitivity"),
    st.Page("views/system.py", title="System"),
    st.Page("views/playground.py", title="Playground"),
])
navigation.run()
