"""Every dashboard page through Streamlit's AppTest: renders without exception, runs produce rows and charts,
bad input produces a message."""
import json

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, needs_mirror, wait_for_jobs

pytestmark = needs_mirror


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run()


def messages(at) -> list[str]:
    return [e.value for e in at.error]


def test_overview_renders_backend_models_and_result_rows():
    from core.eval.config import EvalConfig
    from core.eval.pipeline import run_eval

    run_eval(EvalConfig("resnet20", bits=4, limit=100, bench=False))
    at = app()
    assert not at.exception
    assert any(m.label == "Backend" for m in at.metric)
    tables = [df.value for df in at.dataframe]
    assert {"resnet20", "smollm2-135m-instruct"} <= set(tables[0]["model"])
    assert "resnet20" in set(tables[-1]["model"]) and "q4g64" in set(tables[-1]["tag"])


def test_quantize_page_runs_and_shows_result_next_to_baseline_then_tradeoffs_chart_it():
    at = app().switch_page("views/quantize.py").run()
    at.selectbox(key="q_model").set_value("resnet20")
    at.multiselect(key="q_bits").set_value([3])
    at.selectbox(key="q_group").set_value(32)
    at.number_input(key="q_limit").set_value(120)
    at.button(key="q_run").click().run()
    assert not at.exception and not messages(at)
    (job,) = wait_for_jobs()  # the worker process ran it, not the page (records are per test)
    assert job.kind == "eval" and job.state == "done" and "resnet20" in job.title
    at.run()
    table = at.dataframe[0].value
    assert list(table["configuration"]) == ["resnet20 fp", "resnet20 q3g32"]
    assert table["Δ vs full precision"].iloc[0] == "baseline" and "pts" in table["Δ vs full precision"].iloc[1]
    assert len(at.get("plotly_chart")) == 1
    assert any("120 images" in c.value for c in at.caption)

    at.switch_page("views/tradeoffs.py").run()
    assert not at.exception
    assert len(at.get("plotly_chart")) >= 2  # size and bits charts (latency too when benchmarked rows exist)


def test_tradeoffs_against_the_ecosystem_charts_the_committed_frontier_reports():
    from core.report import ecosystem

    at = app().switch_page("views/tradeoffs.py").run()
    at.radio(key="t_view").set_value("Against the ecosystem").run()
    assert not at.exception
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    tools = [t["name"] for t in chart["data"]]
    assert "lab" in tools and "mlx-lm" in tools and chart["layout"]["yaxis"]["type"] == "log"
    budget = at.dataframe[0].value
    assert list(budget["budget (bits/weight)"]) == list(ecosystem.BUDGETS)
    at.radio(key="e_metric").set_value("ppl").run()
    assert not at.exception and json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]["yaxis"]["type"] == "linear"


def test_quantize_page_rejects_an_impossible_configuration():
    at = app().switch_page("views/quantize.py").run()
    at.multiselect(key="q_bits").set_value([])
    at.button(key="q_run").click().run()
    assert not at.exception
    assert messages(at) == ["Pick at least one bit width to compare with full precision."]


def test_quantize_page_runs_a_float_mode_at_its_own_width():
    """mxfp8 is 8 bits in groups of 32: the config says so, the page does not pick a width for it."""
    at = app().switch_page("views/quantize.py").run()
    at.selectbox(key="q_model").set_value("resnet20-mlxq")
    at.selectbox(key="q_mode").set_value("mxfp8").run()
    at.number_input(key="q_limit").set_value(100)
    at.checkbox(key="q_bench").uncheck()
    at.button(key="q_run").click().run()
    assert not at.exception and not messages(at)
    (job,) = wait_for_jobs()
    assert job.state == "done", job.error
    assert [(c["mode"], c["bits"], c["group_size"]) for c in job.spec["configs"]] == [("affine", 16, None),
                                                                                      ("mxfp8", 8, 32)]
    at.run()
    assert list(at.dataframe[0].value["configuration"]) == ["resnet20-mlxq fp", "resnet20-mlxq mxfp8"]


def test_quantize_page_exports_a_configuration(tmp_path):
    at = app().switch_page("views/quantize.py").run()
    at.selectbox(key="q_model").set_value("resnet20-mlxq")
    at.multiselect(key="q_bits").set_value([4]).run()
    at.button(key="q_export").click().run()
    assert messages(at) == ["Say where to write the export: a folder, or a .gguf file for the GGUF format."]
    assert at.selectbox(key="q_export_format_vision").options == ["mlx"]  # GGUF holds language models
    at.text_input(key="q_export_out").input(str(tmp_path / "mine"))
    at.button(key="q_export").click().run()
    assert not at.exception and not messages(at)
    (job,) = wait_for_jobs()
    assert job.kind == "export" and job.state == "done", job.error
    at.run()
    assert any(str(tmp_path / "mine") in s.value for s in at.success)
    assert json.loads((tmp_path / "mine" / "quantization.json").read_text())


def test_system_page_shows_live_readings():
    at = app().switch_page("views/system.py").run()
    assert not at.exception
    assert {"Process RSS", "MLX active", "MLX peak"} <= {m.label for m in at.metric} or at.info


def test_playground_classifies_a_test_image_with_both_models():
    at = app().switch_page("views/playground.py").run()
    at.radio(key="p_source").set_value("Test-set sample").run()
    at.number_input(key="p_index").set_value(7).run()
    assert not at.exception and not messages(at)
    panels = [m.value for m in at.markdown if " ms" in m.value]
    assert len(panels) == 2 and panels[0].startswith("**Full precision")


def test_playground_chat_answers_from_both_models_and_rejects_empty_prompts():
    at = app().switch_page("views/playground.py").run()
    at.slider(key="p_max_tokens").set_value(8)
    at.chat_input(key="p_prompt").set_value("What is the capital of France?").run()
    assert not at.exception and not messages(at)
    texts = [m.value for m in at.markdown]
    assert sum("Paris" in t for t in texts) == 2  # greedy, 8 tokens: both say it
    assert any("tokens/s" in c.value for c in at.caption)
    at.chat_input(key="p_prompt").set_value("   ").run()
    assert not at.exception and messages(at) == ["The prompt is empty; type something to send."]
    # the input states the character limit (a longer paste is refused in words: test_playground_polish.py); what
    # fits it can still be over the token limit, and says so
    assert "up to 4,000 characters" in at.chat_input(key="p_prompt").proto.placeholder
    at.chat_input(key="p_prompt").set_value("x" * 4000).run()
    assert not at.exception and "limit is 1024" in messages(at)[0]


def test_demo_mode_shows_only_the_prepared_sweep(tmp_path, monkeypatch):
    from core.eval.config import EvalConfig, cache_key
    from core.eval.pipeline import run_eval
    from core.report import demo

    monkeypatch.setenv("MLXQ_CACHE", str(tmp_path))  # its own demo manifest; results stay in the test folder
    at = app().switch_page("views/tradeoffs.py").run()
    at.sidebar.toggle(key="demo_mode").set_value(True).run()
    assert not at.exception and any("./lab demo" in i.value for i in at.info)

    cfg = EvalConfig("resnet20", bits=6, limit=60, bench=False).validated()
    run_eval(cfg)
    run_eval(EvalConfig("resnet20", bits=5, limit=60, bench=False))  # not part of the demo
    demo.manifest_path().write_text(f'{{"keys": ["{cache_key(cfg)}"]}}')
    at.run()
    assert not at.exception and at.get("plotly_chart")
    tags = {t for chart in at.get("plotly_chart") for t in json.loads(chart.proto.spec)["data"][0].get("hovertext", [])}
    assert any("q6g64" in t for t in tags) and not any("q5g64" in t for t in tags)


def test_sensitivity_page_measures_a_table_then_shows_it_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_SENSITIVITY", str(tmp_path / "sensitivity"))

    def page():
        at = app().switch_page("views/sensitivity.py").run()
        at.selectbox(key="s_model").set_value("resnet20-mlxq")
        at.multiselect(key="s_bits").set_value([8, 2])
        at.number_input(key="s_calib_vision").set_value(32)
        return at.run()

    at = page()
    assert not at.exception and any("Not measured yet" in i.value for i in at.info)
    at.button(key="s_run").click().run()
    assert not at.exception and not messages(at)
    assert wait_for_jobs()[0].state == "done"
    at.run()
    (chart,) = at.get("plotly_chart")
    traces = json.loads(chart.proto.spec)["data"]
    assert [t["name"] for t in traces] == ["2-bit", "8-bit", "mixed-precision choice"]
    assert "KL" in traces[0]["hovertemplate"] and "agreement" in traces[0]["hovertemplate"]
    assert len(traces[0]["x"]) == 20
    caption = next(c.value for c in at.caption if c.value.startswith("Protocol:"))
    assert "CIFAR-10 train, 32 class-stratified images" in caption and "from the sensitivity cache" in caption
    assert "Ringed: the mixed-precision choice for 4.5 bits/weight" in caption
    assert len(at.dataframe[0].value) == 20

    at = page()  # a fresh session: shown at once, without Run
    assert not at.exception and not at.info
    assert any("from the sensitivity cache" in c.value for c in at.caption) and len(at.get("plotly_chart")) == 1


def test_quantize_page_runs_the_mixed_method_within_its_target(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_SENSITIVITY", str(tmp_path / "sensitivity"))
    at = app().switch_page("views/quantize.py").run()
    at.selectbox(key="q_model").set_value("resnet20-mlxq").run()
    assert "awq" not in at.selectbox(key="q_method_vision").options  # AWQ is for language models
    at.selectbox(key="q_method_vision").set_value("mixed").run()
    at.multiselect(key="q_bits").set_value([6])
    at.number_input(key="q_calib_mixed_vision").set_value(32)
    at.number_input(key="q_target_bpw").set_value(8.0)
    at.number_input(key="q_limit").set_value(100)
    at.checkbox(key="q_bench").uncheck()
    at.button(key="q_run").click().run()
    assert not at.exception and not messages(at)
    assert wait_for_jobs()[0].state == "done"
    at.run()
    table = at.dataframe[0].value
    assert list(table["configuration"]) == ["resnet20-mlxq fp", "resnet20-mlxq mixed8-g64"]
    assert float(table["bits/weight"].iloc[1]) <= 8.0


def test_quantize_page_takes_a_users_model_folder_shows_whether_it_fits_and_runs_it(tmp_path, smollm2_dir):
    from core.models.synthetic import make_random_lm

    folder = make_random_lm("tiny", tmp_path / "my-model", smollm2_dir)
    at = app().switch_page("views/quantize.py").run()
    at.radio(key="q_source").set_value("your own").run()
    at.text_input(key="q_own").set_value(str(tmp_path / "missing")).run()
    assert not at.exception and messages(at)[0].startswith(f"Unknown model '{tmp_path / 'missing'}'")
    (tmp_path / "empty").mkdir()
    at.text_input(key="q_own").set_value(str(tmp_path / "empty")).run()
    assert messages(at) == [f"Unknown model '{tmp_path / 'empty'}': it is not an mlx-lm model folder (a "
                            "config.json beside its safetensors weights)."]
    at.text_input(key="q_own").set_value(str(folder)).run()
    assert not at.exception and not messages(at)
    at.multiselect(key="q_bits").set_value([4])
    at.selectbox(key="q_machine").set_value(8).run()
    fit = at.dataframe[0].value
    assert list(fit["configuration"]) == ["full precision", "q4g64 (rtn)"]
    assert set(fit["fits"]) == {"yes"} and (fit["evaluate_gb"] > 0.4).all()
    assert any("Predicted from config.json" in c.value for c in at.caption)
    at.number_input(key="q_limit_lm").set_value(1)
    at.button(key="q_run").click().run()
    assert not at.exception and not messages(at)
    (job,) = wait_for_jobs()
    assert job.state == "done", job.error
    at.run()
    assert list(at.dataframe[1].value["configuration"]) == [f"{folder} fp", f"{folder} q4g64"]
