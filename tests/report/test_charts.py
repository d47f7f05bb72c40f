"""Trade-off chart logic on hand-made rows: the Pareto frontier and the series of the bit-width chart."""
import pandas as pd

from core.report.charts import bits_chart, frame, pareto_mask, tradeoff_chart


def row(bits, value, size, tag=None, model="m", latency=None, group=64, mode="affine"):
    return {"model": model, "bits": bits, "value": value, "stderr": 0.1, "size_bytes": size * 1e6,
            "metric": "top1_accuracy", "tag": tag or ("fp" if bits >= 16 else f"q{bits}g{group}"), "method": "rtn",
            "group_size": None if bits >= 16 else group, "mode": mode, "backend": "cpu", "n": 100,
            "bits_per_weight": bits, "latency_ms_p50": latency, "protocol": "p"}


def test_pareto_frontier_keeps_only_undominated_points():
    df = frame([row(16, 92.0, 1.0), row(8, 92.1, 0.3), row(4, 90.0, 0.2), row(3, 85.0, 0.25), row(2, 50.0, 0.1)])
    mask = pareto_mask(df, "size_mb", higher_is_better=True)
    # 16-bit is beaten by 8-bit (smaller and better); 3-bit by 4-bit (smaller and better)
    assert list(df.loc[mask, "bits"]) == [8, 4, 2]
    lower = frame([{**row(16, 20.0, 1.0), "metric": "perplexity"}, {**row(4, 25.0, 0.2), "metric": "perplexity"},
                   {**row(3, 30.0, 0.3), "metric": "perplexity"}])
    assert list(lower.loc[pareto_mask(lower, "size_mb", higher_is_better=False), "bits"]) == [16, 4]


def test_charts_have_one_series_per_group_size_and_a_frontier():
    rows = [row(16, 92.0, 1.0, latency=5), row(8, 92.1, 0.3, latency=8), row(4, 90.0, 0.2, latency=9),
            row(4, 90.5, 0.22, group=32, latency=9), row(4, 89.0, 0.18, tag="mxfp4", mode="mxfp4", group=32, latency=9)]
    df = frame(rows)
    names = [t.name for t in bits_chart(df, "top1_accuracy").data if t.showlegend is not False]
    assert names == ["m g32", "m g64", "m mxfp4"]
    g64 = next(t for t in bits_chart(df, "top1_accuracy").data if t.name == "m g64")
    assert list(g64.x) == [4, 8, 32]  # closed by the full-precision point, at float32's 32 bits per weight
    fig = tradeoff_chart(df, "size_mb", "top1_accuracy")
    assert any(t.name == "Pareto frontier: m" for t in fig.data)
    hover = fig.data[0].hovertemplate
    assert "group_size" in hover and "protocol" in hover
