"""MLX Quant Lab dashboard: `./lab dashboard` (or `streamlit run app.py` with the environment set up)."""
import streamlit as st

st.set_page_config(page_title="MLX Quant Lab", layout="wide")
navigation = st.navigation([
    st.Page("pages/overview.py", title="Overview", default=True),
    st.Page("pages/quantize.py", title="Quantize & evaluate"),
    st.Page("pages/tradeoffs.py", title="Trade-offs"),
    st.Page("pages/system.py", title="System"),
    st.Page("pages/playground.py", title="Playground"),
])
navigation.run()
