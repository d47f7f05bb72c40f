"""The dashboard's readouts through Streamlit's AppTest, on hand-made result rows (no evaluation runs, so each test
takes seconds): full precision named float32, intervals named, tables with labels and units, protocols kept apart,
the "why" beside a slower quantized model, memory readings that say what they count, a capped subset, a Run button
page that follows its run as a job, error messages without class names, demo mode that persists across pages, and the
first-run note of a clone without the data mirror."""
import base64
import json
from dataclasses import fields

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO

VISION_BENCH = "latency: batch 1, 10 trials after 3 warm-up; throughput: batch 250, median of 3 trials"


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()


def row(bits=16, n=200, value=91.5, latency=None, created="2026-01-01T00:00:00", model="resnet20-mlxq", **extra):
    fp = bits >= 16
    body = {"model": model, "bits": bits, "tag": "fp" if fp else f"q{bits}g64", "method": "rtn", "mode": "affine",
            "group_size": None if fp else 64, "metric": "top1_accuracy", "value": value, "stderr": 0.9, "n": n,
            "ci95_low": value - 2.0, "ci95_high": value + 1.5, "kind": "vision", "size_bytes": 1.1e6 if fp else 0.2e6,
            "bits_per_weight": 32.0 if fp else 4.5, "latency_ms_p50": latency,
            "throughput": None if latency is None else 1000 / latency, "throughput_unit": "images/s",
            "peak_memory_bytes": None if latency is None else 400e6, "backend": "cpu", "compute_dtype": "float32",
            "quality_dtype": "float32", "baseline": "float32 weights", "created": created,
            "protocol": f"CIFAR-10 test, {n} images (class-stratified subset, seed 0); top-1 %, 95 % Wilson interval",
            "bench_protocol": VISION_BENCH if latency else "", "environment": {"device": "test CPU"}}
    return {**body, **extra}


@pytest.fixture
def results(tmp_path, monkeypatch):
    """A results folder of its own; `write(rows)` puts rows in it as the cache would."""
    from core.cache import ResultCache

    monkeypatch.setenv("MLXQ_RESULTS", str(tmp_path / "results"))
    cache = ResultCache(tmp_path / "results")

    def write(rows):
        for i, r in enumerate(rows):
            cache.write(f"{i:032x}", r)
    return write


def numbers(array) -> list[float]:
    """A Plotly JSON array: a list, or Plotly's typed array {'dtype', 'bdata'} (base64 of the raw values)."""
    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=array["dtype"]).tolist()
    return list(array)


def column_labels(element) -> dict:
    return {k: v.get("label") for k, v in json.loads(element.proto.columns).items()}


def test_overview_names_full_precision_float32_with_labelled_columns(results):
    results([row(created="2026-01-01T00:00:01"), row(bits=4, value=90.0)])
    at = app()
    assert not at.exception
    main = next(d for d in at.dataframe if "precision" in d.value.columns)
    assert list(main.value["precision"]) == ["float32 (full precision)", "4-bit, g64"]
    labels = column_labels(main)
    assert labels["size_mb"] == "size" and labels["bits_per_weight"] == "bits/weight"
    assert not ({"bits", "size_bytes", "latency_ms_p50"} & set(main.value.columns))  # raw, or empty in every row
    assert all(main.value[c].notna().any() for c in main.value.columns)
    assert all(d.proto.placeholder == "—" for d in at.dataframe)  # a missing value reads "—", never "None"
    assert any("95 % Wilson interval" in c.value for c in at.caption)


def test_tradeoffs_draws_one_protocol_at_a_time_with_wilson_error_bars(results):
    results([row(n=300, created="2026-01-02"), row(bits=4, n=300, value=90.0, created="2026-01-02"),
             row(n=200), row(bits=4, n=200, value=89.0)])
    at = app().switch_page("views/tradeoffs.py").run()
    assert not at.exception
    choice = at.selectbox(key="t_protocol_top1_accuracy")
    assert len(choice.options) == 2 and "300 images" in choice.value  # newest first

    def points():
        chart = json.loads(at.get("plotly_chart")[0].proto.spec)
        return sorted(y for t in chart["data"] if t.get("mode") != "lines" for y in numbers(t["y"])), chart
    shown, chart = points()
    assert shown == [90.0, 91.5]
    bars = [t["error_y"] for t in chart["data"] if "error_y" in t]
    assert bars and all(numbers(b["array"]) == [1.5] and numbers(b["arrayminus"]) == [2.0] for b in bars)  # Wilson
    assert any("Error bars: 95 % Wilson interval" in c.value for c in at.caption)
    choice.set_value(next(o for o in choice.options if "200 images" in o)).run()
    assert points()[0] == [89.0, 91.5]


def test_tradeoffs_explains_a_slower_quantized_latency(results):
    results([row(latency=11.0), row(bits=4, value=90.0, latency=22.0)])
    at = app().switch_page("views/tradeoffs.py").run()
    assert not at.exception
    note = next(c.value for c in at.caption if c.value.startswith("Slower than full precision"))
    assert "2.00x the latency (22.00 against 11.00 ms p50, one image)" in note and "no quantized convolution" in note


def fake_result(r: dict):
    from core.eval.config import EvalResult

    names = {f.name for f in fields(EvalResult)}
    return EvalResult(**{k: v for k, v in r.items() if k in names})


def a_job(state: str, result: dict | None = None):
    """An eval job's record in the test's jobs folder, as the worker leaves it (no worker runs here)."""
    from core.jobs import process
    from core.jobs.store import JobStore

    store = JobStore()
    job = store.submit("eval", {"configs": [{"model": "resnet20-mlxq", "bits": 4}]})
    if state != "queued":
        job = store.finish(store.claim_next(process.identity()), state, state, result=result)
    return job


def test_quantize_follows_its_job_cancels_it_and_explains_the_result(results):
    a_job("queued")
    at = app().switch_page("views/quantize.py").run()
    assert not at.exception
    assert any("waiting for the worker" in p.proto.text for p in at.get("progress"))
    buttons = {b.proto.label: b.proto.disabled for b in at.button}
    assert buttons.get("Run") is False and buttons.get("Cancel") is False  # more runs queue behind it
    at.button(key="q_cancel").click().run()
    assert not at.exception and any("The last run was cancelled" in w.value for w in at.warning)

    a_job("done", {"rows": [row(latency=11.0), row(bits=4, value=90.0, latency=22.0)]})
    at.run()
    assert not at.exception and not at.error and not at.warning
    assert list(at.dataframe[0].value["precision"]) == ["float32 (full precision)", "4-bit"]
    assert any("no quantized convolution" in i.value for i in at.info)
    assert any("Peak MLX memory counts the weights plus the activations of a batch of 250" in c.value
               for c in at.caption)


def test_a_failed_job_reads_in_words_without_exception_class(results):
    from core.jobs import process
    from core.jobs.store import JobStore
    from core.jobs.worker import run_job

    store = JobStore()
    store.submit("eval", {"configs": [{"model": 5, "bits": 4}]})  # not a name: fails inside the run, not as LabError
    run_job(store, store.claim_next(process.identity()))
    at = app().switch_page("views/quantize.py").run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert message.startswith("Something went wrong") and "worker's log" in message and "Error" not in message


def test_quantize_caps_the_subset_at_the_test_set():
    at = app().switch_page("views/quantize.py").run()
    at.selectbox(key="q_model").set_value("resnet20-mlxq").run()
    subset = at.number_input(key="q_limit")
    assert subset.max == 10000 and "0 = all 10,000" in subset.label
    subset.set_value(20000).run()
    assert at.number_input(key="q_limit").value <= 10000
    at.number_input(key="q_limit").set_value(10000).run()
    assert any("is the whole test set" in c.value for c in at.caption)
    at.selectbox(key="q_model").set_value("smollm2-135m-instruct").run()  # chunks counted from the tokenized text
    chunks = at.number_input(key="q_limit_lm")
    assert not at.exception and chunks.max == 592 and "0 = all 592" in chunks.label


def test_system_readings_say_what_they_count():
    at = app().switch_page("views/system.py").run()
    assert not at.exception
    if not at.metric:  # the monitor's first reading comes within a second
        at.run()
    helps = {m.label: m.proto.help for m in at.metric}
    assert {"Process RSS", "MLX active", "MLX peak", "MLX cache"} <= set(helps)
    assert all(helps.values()) and "benchmark" in helps["MLX peak"] and "RSS" in helps["MLX cache"]


def test_demo_mode_persists_across_pages():
    at = app()
    at.sidebar.toggle(key="demo_mode").set_value(True).run()
    at.switch_page("views/system.py").run()  # a page without the toggle
    at.switch_page("views/tradeoffs.py").run()
    assert not at.exception and at.sidebar.toggle(key="demo_mode").value is True


def test_overview_of_a_clone_without_the_mirror_says_what_works(results, monkeypatch):
    monkeypatch.setenv("MLXQ_MIRROR", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    at = app()
    assert not at.exception
    first = next(i.value for i in at.info if "No data mirror here" in i.value)
    assert "`resnet20-mlxq`" in first and "MLXQ_MIRROR=/path/to/the/mirror ./lab dashboard" in first
    hint = next(i.value for i in at.info if i.value.startswith("No results yet"))
    assert "--model resnet20-mlxq" in hint and "--model resnet20 " not in hint
