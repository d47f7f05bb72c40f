"""The lab's recipes on the frontier: round-to-nearest grids, the calibrated methods, mixed precision at each
bits-per-weight budget, and mixed precision whose layers are quantized by AWQ or GPTQ. Each is made by the lab's
one quantization path (core.quant.recipe) with its default calibration (WikiText-2 validation) and scored on the
protocol's windows from its de-quantized weights."""
from __future__ import annotations

from core.bench.frontier.protocol import MODEL, Journal, Measured, Protocol, timed
from core.quant.config import QuantConfig
from core.quant.layers import bits_per_weight, dequantize_model
from core.quant.recipe import quantize


def _rtn(bits: int, group: int) -> dict:
    return dict(bits=bits, group_size=group)


# In the order a time-limited run should measure them: the grids, then the calibrated methods at the budgets
# the issue names (3.5, 4.0, 4.5, 5.0, 6.5, 8.5 bits per weight). A run resumed from its journal measures only
# what is missing, in this order.
GRIDS_AND_METHODS = (
    *(_rtn(b, g) for b, g in ((8, 64), (6, 64), (5, 64), (4, 32), (4, 64), (3, 32), (3, 64), (8, 32))),
    *(dict(bits=b, group_size=g, method="awq") for b, g in ((4, 64), (3, 64), (4, 32), (3, 32), (6, 64))),
    dict(bits=6, group_size=64, quantizer="mlx"),  # MLX's rounding (mx.quantize), as mlx-lm's convert stores it
    *(dict(bits=b, group_size=64, method="gptq") for b in (4, 3)),
)
MIXED = (
    *(dict(bits=3, group_size=64, method="mixed", target_bpw=t) for t in (3.5, 4.0, 4.5)),
    dict(bits=4, group_size=64, method="mixed", target_bpw=5.0),
    *(dict(bits=3, group_size=64, method="mixed", mixed_layers=m, target_bpw=t)
      for m in ("awq", "gptq") for t in (4.0, 4.5)),
    *(dict(bits=4, group_size=64, method="mixed", mixed_layers=m, target_bpw=6.5) for m in ("awq", "rtn")),
)
# Distillation (DWQ) from AWQ and from mixed precision with AWQ layers: the slowest recipes, their own section.
DISTILLED = (
    *(dict(bits=b, group_size=64, method="dwq", dwq_from="awq") for b in (4, 3, 6)),
    dict(bits=3, group_size=64, method="dwq", dwq_from="mixed", mixed_layers="awq", target_bpw=4.0),
)


def config(recipe: dict) -> QuantConfig:
    return QuantConfig(MODEL, dtype="float32", **recipe).validated()


RECIPES = GRIDS_AND_METHODS + MIXED + DISTILLED


def measure(protocol: Protocol, journal: Journal, recipes=RECIPES) -> list[Measured]:
    """Every recipe on every view of the protocol, from the journal when it is there, else quantized and scored
    now; a recipe that fails is reported with its reason and the others go on."""
    out = []
    for recipe in recipes:
        try:
            cfg = config(recipe)
        except Exception as exc:  # noqa: BLE001 - a recipe this version cannot build: the report says so
            out += journal.add(protocol.failed("lab", str(recipe), f"{type(exc).__name__}: {exc}"))
            continue
        done = journal.done(f"lab {cfg.tag}")
        if done:
            out += done
            continue
        if protocol.out_of_time():
            out += protocol.failed("lab", cfg.tag, "not measured: the run's time limit was reached")
            continue
        try:
            q, seconds = timed(lambda: quantize(cfg))
            bpw = bits_per_weight(q.model)  # before de-quantizing (in place) for the evaluator
            measured = protocol.score("lab", cfg.tag, bpw, dequantize_model(q.model), seconds)
        except Exception as exc:  # noqa: BLE001 - one failed recipe must not lose a device run's other rows
            measured = protocol.failed("lab", cfg.tag, f"{type(exc).__name__}: {exc}")
        out += journal.add(measured)
    return out
