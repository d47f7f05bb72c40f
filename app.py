"""MLX Quant Lab dashboard: `./lab dashboard` (or `streamlit run app.py` with the environment set up)."""
import streamlit as st

from core import runtime
from views._jobs import jobs_panel

runtime.configure_process()  # once per process (Streamlit reruns this script): what `python -m core` sets up too
st.set_page_config(page_title="MLX Quant Lab", layout="wide")
navigation = st.navigation([
    st.Page("views/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("views/quantize.py", title="Quantize & evaluate", icon=":material/tune:"),
    st.Page("views/tradeoffs.py", title="Trade-offs", icon=":material/scatter_plot:"),
    st.Page("views/sensitivity.py", title="Sensitivity", icon=":material/layers:"),
    st.Page("views/system.py", title="System", icon=":material/memory:"),
    st.Page("views/playground.py", title="Playground", icon=":material/chat:"),
])
with st.sidebar:
    jobs_panel()  # every page: runs in progress, with Cancel
navigation.run()
