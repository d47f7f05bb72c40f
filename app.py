"""MLX Quant Lab dashboard: `./lab dashboard` (or `streamlit run app.py` with the environment set up)."""
import streamlit as st

st.set_page_config(page_title="MLX Quant Lab", layout="wide")
navigation = st.navigation([
    st.Page("pages/overview.py", title="Overview", default=True),
])
navigation.run()
