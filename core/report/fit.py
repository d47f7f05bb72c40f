"""Whether a language model at a bit width fits a Mac: the predicted peak of quantizing, evaluating and serving
it (core.quant.footprint), as rows a table shows and one sentence per machine size."""
from __future__ import annotations

from core.quant import footprint
from core.quant.spec import QuantSpec
from core.report.tables import Column

SERVE_CONTEXT = 4096  # tokens per stream the serving estimate assumes


def fit_rows(model: str, widths: list[tuple[int | None, int | None, str]], method: str = "rtn", calib: int = 0,
             windows: int = 2, machine_gb: int = 16, streams: int = 1, parallel: int = 1) -> list[dict] | None:
    """One row per (bits, group size, mode): the predicted peak of each stage in GB, whether the run fits a Mac
    of `machine_gb`, and the smallest Mac it fits. None for a vision model (small enough for any machine)."""
    shape = footprint.model_shape(model)
    if shape is None:
        return None
    rows = []
    for bits, group, mode in [(16, None, "affine"), *widths]:
        spec = QuantSpec(bits, group, mode).validated()  # a float mode: None, its own width
        stages = {f.stage: f for f in footprint.predict(shape, spec, method if not spec.full_precision else "rtn",
                                                        calib=calib, windows=windows, streams=streams,
                                                        context=SERVE_CONTEXT, dtype="bfloat16",
                                                        parallel=parallel)}
        peak = max(f.peak_bytes for f in stages.values())
        smallest = next((size for size in footprint.MAC_SIZES_GB
                         if peak <= footprint.USABLE_SHARE * size * footprint.GB), None)
        rows.append({
            "configuration": "full precision" if spec.full_precision else f"{spec.tag} ({method})",
            "model_gb": footprint.model_bytes(shape, spec, "bfloat16") / footprint.GB,
            **{f"{stage}_gb": f.peak_bytes / footprint.GB for stage, f in stages.items()},
            "fits": "yes" if all(f.verdicts()[machine_gb] for f in stages.values()) else "no",
            "smallest_mac": f"{smallest} GB" if smallest else f"none up to {footprint.MAC_SIZES_GB[-1]} GB",
        })
    return rows


def fit_columns(machine_gb: int, streams: int = 1) -> dict[str, Column]:
    """How the pages label `fit_rows`' columns."""
    return {
        "configuration": Column("configuration"),
        "model_gb": Column("model", "%.2f GB", "the weights as deployed in bfloat16: packed integers, scales, norms"),
        "quantize_gb": Column("quantize", "%.1f GB", "predicted peak of the whole process while quantizing"),
        "evaluate_gb": Column("evaluate", "%.1f GB", "predicted peak while measuring perplexity and KL"),
        "serve_gb": Column(f"serve {streams} x {SERVE_CONTEXT}", "%.1f GB",
                           f"predicted peak serving {streams} stream(s) of {SERVE_CONTEXT} tokens"),
        "fits": Column(f"fits {machine_gb} GB", help=f"every stage within {footprint.USABLE_SHARE:.0%} of a "
                       f"{machine_gb} GB Mac's memory"),
        "smallest_mac": Column("smallest Mac", help="the smallest of 8, 16, 24, 32, 64 and 128 GB that fits "
                               "every stage"),
    }


PROTOCOL = ("Predicted from config.json and the chosen widths (core/quant/footprint.py), not measured: the whole "
            "process's peak, including Python and MLX (about {process:.1f} GB). A Mac fits a run when the peak is "
            "within {share:.0%} of its memory (what MLX may wire on Apple Silicon). The bench's scale section "
            "measures the peak beside each prediction. Evaluation: perplexity + KL on the chosen chunks, computed "
            "in float32; serving: the model in bfloat16 with a bfloat16 KV cache.")


def protocol() -> str:
    return PROTOCOL.format(process=footprint.PROCESS_BYTES / footprint.GB, share=footprint.USABLE_SHARE)
