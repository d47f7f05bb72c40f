"""Dashboard pages through Streamlit's AppTest: they render without exceptions and show measured rows."""
import json

from streamlit.testing.v1 import AppTest

from conftest import REPO, needs_mirror


@needs_mirror
def test_overview_renders_backend_models_and_result_rows(tmp_path, monkeypatch):
    from core.pipeline import EvalConfig, run_eval

    run_eval(EvalConfig("resnet20", bits=4, limit=100, bench=False))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any(m.label == "Backend" for m in at.metric)
    tables = [df.value for df in at.dataframe]
    models = tables[0]
    assert {"resnet20", "smollm2-135m-instruct"} <= set(models["model"])
    results = tables[-1]
    assert "resnet20" in set(results["model"]) and "q4g64" in set(results["tag"])
