"""MLX Quant Lab: all logic, no Streamlit. Importing it changes nothing process-wide: a command that computes calls
core.runtime.configure_process first (the CLI entry point core/__main__.py, the dashboard's app.py, the tests)."""
