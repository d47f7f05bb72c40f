"""The dashboard's readouts on hand-made rows: full precision named as its dtype and placed at its width, every
interval named and drawn as named, what peak memory counts, the per-backend "why" beside a slower quantized
model, tables without raw or empty columns, the first-run note, and benchmark progress."""
import mlx.core as mx
import mlx.nn as nn
import pytest

from core.report import labels, tables
from core.report.charts import bits_chart, frame, tradeoff_chart
from core.report.status import MIRROR_COMMAND, first_run_text, no_results_hint
from core.report.summaries import comparison_table
from core.report.why import speed_notes

VISION_BENCH = "latency: batch 1, 10 trials after 3 warm-up; throughput: batch 250, median of 3 trials"
LM_BENCH = "prefill 64 tokens, then 16 greedy decode steps with a KV cache, batch 1; latency per decoded token"


def row(bits=16, value=91.5, latency=None, throughput=None, backend="cpu", dtype="float32", metric="top1_accuracy",
        model="resnet20", n=1000, **extra):
    fp = bits >= 16
    body = {"model": model, "bits": bits, "tag": "fp" if fp else f"q{bits}g64", "method": "rtn", "mode": "affine",
            "group_size": None if fp else 64, "metric": metric, "value": value, "stderr": 0.5, "n": n,
            "kind": "vision" if metric == "top1_accuracy" else "lm", "size_bytes": 1.1e6 if fp else 0.2e6,
            "bits_per_weight": 32.0 if fp else 4.5, "latency_ms_p50": latency, "throughput": throughput,
            "throughput_unit": "images/s" if throughput else "", "backend": backend, "device": "a device",
            "compute_dtype": dtype, "protocol": f"CIFAR-10 test, {n} images", "baseline": "float32 weights",
            "peak_memory_bytes": None, "bench_protocol": ""}
    if metric == "top1_accuracy":
        body.update(ci95_low=value - 1.75, ci95_high=value + 1.25)
    return {**body, **extra}


def test_full_precision_is_its_dtype_and_its_width():
    assert labels.precision_label(row()) == "float32 (full precision)"
    assert labels.stored_bits(row()) == 32 and labels.stored_bits(row(dtype="bfloat16")) == 16
    assert labels.precision_label(row(bits=4)) == "4-bit"
    assert labels.precision_label(row(bits=4, mode="mxfp4")) == "mxfp4"
    df = frame([row(), row(bits=8, value=91.4), row(bits=4, value=90.0)])
    assert list(df["precision"]) == ["float32 (full precision)", "8-bit", "4-bit"]
    fig = bits_chart(df, "top1_accuracy")
    assert list(fig.data[0].x) == [4, 8, 32]
    assert "float32 = 32" in fig.layout.xaxis.title.text and "16" not in fig.layout.xaxis.title.text


def test_accuracy_error_bars_are_the_wilson_interval_and_perplexity_bars_one_standard_error():
    acc = row(value=90.0)
    assert labels.error_bounds(acc) == pytest.approx((1.75, 1.25))
    assert labels.quality_text(acc) == "90.00 % (95 % Wilson 88.25–91.25)"
    ppl = row(metric="perplexity", value=25.0)
    assert labels.error_bounds(ppl) == (0.5, 0.5) and labels.quality_text(ppl) == "25.00 (± 0.50 s.e.)"
    fig = tradeoff_chart(frame([acc, row(bits=4, value=88.0)]), "size_mb", "top1_accuracy")
    bars = [(list(t.error_y.array), list(t.error_y.arrayminus)) for t in fig.data if t.error_y.array is not None]
    assert bars and all(up == pytest.approx([1.25]) and down == pytest.approx([1.75]) for up, down in bars)
    table, notes = comparison_table([acc, row(bits=4, value=88.0)])
    assert table[0]["top-1 % [95 % Wilson]"] == "90.00 % [88.25, 91.25]"
    assert "Intervals: top-1 accuracy, 95 % Wilson interval." in notes


def test_peak_memory_says_it_counts_the_benchmark_activations():
    assert "a batch of 250 images" in labels.peak_memory_scope({"bench_protocol": VISION_BENCH})
    assert "64-token prefill" in labels.peak_memory_scope({"bench_protocol": LM_BENCH})
    rows = [row(latency=10.0, peak_memory_bytes=400e6, bench_protocol=VISION_BENCH)]
    _, notes = comparison_table(rows)
    assert any(n.startswith("Peak MLX memory counts the weights plus the activations of a batch of 250") for n in notes)


def slower_pair(backend, dtype="float32", metric="top1_accuracy"):
    return [row(latency=12.34, throughput=456.7, backend=backend, dtype=dtype, metric=metric),
            row(bits=4, latency=30.85, throughput=123.4, backend=backend, dtype=dtype, metric=metric)]


def test_why_notes_quote_the_measured_rows_and_explain_by_backend():
    (cpu_vision,) = speed_notes(slower_pair("cpu"))
    assert "2.50x the latency (30.85 against 12.34 ms p50, one image)" in cpu_vision
    assert "0.27x the throughput (123.4 against 456.7 images/s)" in cpu_vision
    assert "no quantized convolution" in cpu_vision
    (cpu_lm,) = speed_notes(slower_pair("cpu", metric="perplexity"))
    assert "per decoded token" in cpu_lm and "no SIMD or BLAS path" in cpu_lm
    (metal_lm,) = speed_notes(slower_pair("metal", "bfloat16", "perplexity"))
    assert metal_lm.count("Worth investigating: on Metal MLX's quantized kernels are the fast path") == 1
    (cuda_lm,) = speed_notes(slower_pair("cuda", metric="perplexity"))
    assert "on CUDA" in cuda_lm and "promoted to float32" in cuda_lm
    (cuda_vision,) = speed_notes(slower_pair("cuda", "bfloat16"))
    assert "fast path on CUDA serve matrix products, not convolutions" in cuda_vision


def test_no_why_note_where_nothing_surprises():
    faster = [row(latency=20.0), row(bits=4, latency=10.0)]
    tie = [row(latency=10.0), row(bits=4, latency=10.5)]
    other_machine = [row(latency=10.0), row(bits=4, latency=30.0, backend="metal")]
    other_dtype = [row(latency=10.0), row(bits=4, latency=30.0, dtype="bfloat16")]
    unbenchmarked = [row(), row(bits=4)]
    for rows in (faster, tie, other_machine, other_dtype, unbenchmarked):
        assert speed_notes(rows) == []


def test_result_tables_have_readable_columns_and_no_empty_ones():
    main, quality, speed, legend = tables.result_tables([row(), row(bits=4, value=90.0)])
    assert "latency_ms_p50" not in main and "peak_memory_mb" not in main  # not benchmarked: no empty column
    assert list(main["precision"]) == ["float32 (full precision)", "4-bit, g64"]
    assert set(main.columns) <= set(tables.RESULT_COLUMNS) and "top5" not in quality and "bench_ref" not in speed
    assert {"model", "tag"} <= set(quality.columns) & set(speed.columns)
    assert list(quality["protocol_ref"]) == ["P1", "P1"] and legend == ["P1: CIFAR-10 test, 1000 images"]
    shown = [(main, tables.RESULT_COLUMNS), (quality, tables.QUALITY_DETAILS), (speed, tables.SPEED_DETAILS)]
    labels_shown = {columns[c].label for df, columns in shown for c in df}
    assert not any("_" in label or label == "None" for label in labels_shown)


STATUS_BARE = {
    "models": [{"model": "resnet20", "kind": "vision", "status": "missing: no mirror"},
               {"model": "resnet20-mlxq", "kind": "vision", "status": "ready (in the repository)"},
               {"model": "smollm2-135m-instruct", "kind": "lm", "status": "ready (converted)"}],
    "datasets": [{"dataset": "CIFAR-10 test", "source": "Hugging Face hub (uoft-cs/cifar10) on first use"},
                 {"dataset": "WikiText-2 raw test", "source": "Hugging Face hub on first use"}],
}


def test_first_run_note_says_what_works_and_the_one_command(monkeypatch):
    monkeypatch.setenv("MLXQ_MIRROR", "")
    text = first_run_text(STATUS_BARE)
    assert "`resnet20-mlxq`" in text and "chat with `smollm2-135m-instruct`" in text
    assert "Missing: `resnet20`." in text and text.endswith(f"`{MIRROR_COMMAND}`")
    hint = no_results_hint(STATUS_BARE)
    assert "--model resnet20-mlxq" in hint and "--model resnet20 " not in hint and "online" in hint
    everything = {"models": [{**m, "status": "ready (data mirror)"} for m in STATUS_BARE["models"]],
                  "datasets": [{**d, "source": "mirror"} for d in STATUS_BARE["datasets"]]}
    assert first_run_text(everything) is None


def test_the_benchmark_counts_its_trials():
    from core.eval.speed import bench_classifier

    heard = []
    model = nn.Sequential(nn.Linear(8, 4))
    report = bench_classifier(model, mx.zeros((5, 8)), batch=10, trials=10,
                              progress=lambda f, m: heard.append((f, m)))
    assert report.throughput > 0
    assert [m for _, m in heard][:2] == ["trial 1/13", "trial 2/13"] and heard[-1] == (1.0, "trial (batch 10) 13/13")
    assert [f for f, _ in heard] == sorted(f for f, _ in heard)


def test_deltas_carry_their_sign_and_unit_and_latency_its_spread():
    fp, q4 = row(value=21.5, metric="perplexity"), row(bits=4, value=22.25, metric="perplexity", latency=3.0,
                                                       latency_ms_p90=4.5)
    table, _ = comparison_table([fp, q4])
    assert table[1]["Δ vs full precision"] == "+0.75 perplexity"
    assert table[1]["latency p50"] == "3.00 ms (p90 4.50)"
    table, _ = comparison_table([row(value=91.5), row(bits=4, value=90.25)])
    assert table[1]["Δ vs full precision"] == "-1.25 pts"
