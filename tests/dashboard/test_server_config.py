"""The dashboard as `./lab dashboard` starts it: Streamlit's effective settings in this repository (its
.streamlit/config.toml), as Streamlit itself reads them."""
import subprocess
import sys

from conftest import REPO


def test_the_dashboard_listens_on_this_machine_only_sends_no_statistics_and_offers_no_deploy():
    shown = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], cwd=REPO, capture_output=True,
                           text=True, timeout=120).stdout
    effective = {line.split(" = ")[0]: line.split(" = ", 1)[1] for line in shown.splitlines()
                 if " = " in line and not line.startswith("#")}
    assert effective["address"] == '"127.0.0.1"'
    assert effective["gatherUsageStats"] == "false"
    assert effective["toolbarMode"] == '"viewer"'  # no Deploy, Rerun or Clear cache
