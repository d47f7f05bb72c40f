"""mlx-lm's own recipes, run offline through mlx-lm's functions on the lab's full-precision model, with the lab's
calibration text (WikiText-2 validation, never test) in place of the files mlx-lm downloads:

- `convert` at 3/4/6/8 bits, groups 32 and 64 (mlx_lm.utils.quantize_model, which mlx_lm.convert calls);
- the mixed predicates mixed_3_6 and mixed_4_6 (mlx_lm.convert.mixed_quant_predicate_builder);
- `dynamic_quant` (mlx_lm.quant.dynamic_quant: sensitivities, then the threshold for a bits-per-weight target);
- GPTQ (4-bit, from a bfloat16 copy) and AWQ (mlx_lm.quant.gptq / awq) with their command-line defaults;
- DWQ (mlx_lm.quant.dwq.dwq_quantize) from `convert`'s 4-bit g64, at its default rate and at a ten times higher one.

Calibration sizes follow the lab's method of the same name, so both sides see the same text. mlx-lm gets the
model in float16, as it loads a 16-bit checkpoint, so its scales and biases are 16-bit as they are in practice
(from the float32 copy they would be 32-bit and every recipe would cost half a bit more); the float16 rounding
of the weights alone is measured as its own row."""
from __future__ import annotations

import copy

import mlx.core as mx
import mlx.nn as nn

from core.bench.frontier.protocol import CTX, Journal, Measured, Protocol, timed
from core.quant.calibration import calibration_tokens, default_size
from core.quant.layers import bits_per_weight, dequantize_model

SEED = 123  # mlx-lm's command-line default


def _convert(model, tokenizer, bits: int, group: int):
    from mlx_lm.utils import quantize_model
    return quantize_model(model, {}, group, bits)[0]


def _mixed(model, tokenizer, recipe: str):
    from mlx_lm.convert import mixed_quant_predicate_builder
    from mlx_lm.utils import quantize_model
    return quantize_model(model, {}, 64, 4, quant_predicate=mixed_quant_predicate_builder(recipe, model, 64))[0]


def _dynamic(model, tokenizer, target_bpw: float, low=(4, 64), high=(5, 64)):
    from mlx_lm.quant.dynamic_quant import estimate_sensitivities, estimate_threshold
    from mlx_lm.utils import quantize_model
    data = calibration_tokens(tokenizer, default_size("mixed", "lm"), CTX)
    sensitivities = dict(estimate_sensitivities(model, data, *low, *high))
    threshold = estimate_threshold(model, sensitivities, target_bpw, *low, *high)

    def predicate(path, module):
        if not hasattr(module, "to_quantized"):
            return False
        return {"bits": high[0], "group_size": high[1]} if sensitivities[path] > threshold else True

    return quantize_model(model, {}, low[1], low[0], quant_predicate=predicate)[0]


def _gptq(model, tokenizer, bits: int):
    from mlx_lm.quant.gptq import gptq_quantize
    data = calibration_tokens(tokenizer, default_size("gptq", "lm"), CTX)
    return gptq_quantize(model, data, bits, 64, fallback_bits=6, fallback_group_size=64)[0]


def _awq(model, tokenizer, bits: int):
    from mlx_lm.quant.awq import AWQ_MODEL_CONFIGS, awq_quantize
    data = calibration_tokens(tokenizer, default_size("awq", "lm"), CTX)
    awq_quantize(model, data, AWQ_MODEL_CONFIGS["llama"], group_size=64, bits=bits, embed_group_size=32,
                 embed_bits=4, n_grid=20)
    return model


def _dwq(model, tokenizer, lr: float, held_out: int = 32, batch: int = 4):
    import mlx.optimizers as optimizers
    from mlx_lm.quant.dwq import dwq_quantize
    from mlx_lm.utils import quantize_model
    chunks = calibration_tokens(tokenizer, None, CTX).tolist()  # all of WikiText-2 validation
    items = [(c, 0) for c in chunks]
    student = quantize_model(copy.deepcopy(model), {}, 64, 4)[0]
    mx.random.seed(SEED)
    dwq_quantize(student, lambda x, _i, split: model(x), optimizers.Adam(learning_rate=lr, bias_correction=True),
                 items[held_out:], items[:held_out], batch, CTX + 1, SEED, dtype=mx.float16)
    return student


def _float16(model, tokenizer):
    return model  # measure() hands every recipe a float16 copy: this row is that rounding alone


RECIPES = (
    ("float16 (no quantization)", _float16, {}),
    *((f"convert {b}-bit g{g}", _convert, dict(bits=b, group=g)) for b, g in
      ((8, 64), (6, 64), (4, 32), (4, 64), (3, 32), (3, 64), (8, 32), (6, 32))),
    ("mixed_4_6", _mixed, dict(recipe="mixed_4_6")),
    ("mixed_3_6", _mixed, dict(recipe="mixed_3_6")),
    ("awq 4-bit g64", _awq, dict(bits=4)),
    ("awq 3-bit g64", _awq, dict(bits=3)),
    ("dynamic_quant 4/5-bit @4.5", _dynamic, dict(target_bpw=4.5)),
    ("dynamic_quant 4/5-bit @5.0", _dynamic, dict(target_bpw=5.0)),
    ("dwq 4-bit g64 (lr 1e-6)", _dwq, dict(lr=1e-6)),
    ("dwq 4-bit g64 (lr 1e-5)", _dwq, dict(lr=1e-5)),
    # GPTQ from the float16 model gave non-finite outputs; SmolLM2's published checkpoint is bfloat16, which is
    # what mlx-lm would load it as. mlx-lm's GPTQ takes 2, 4 and 8 bits only.
    ("gptq 4-bit g64 (bfloat16 model)", _gptq, dict(bits=4, dtype=mx.bfloat16)),
)


def _half(model, dtype=mx.float16):
    copied = copy.deepcopy(model)
    copied.set_dtype(dtype)
    return copied


def installed() -> bool:
    try:
        import mlx_lm.quant.dwq  # noqa: F401  (its imports are the widest of the recipes')
    except ImportError:
        return False
    return True


def measure(protocol: Protocol, journal: Journal, recipes=RECIPES) -> list[Measured]:
    """Every recipe on every view of the protocol, from the journal when it is there, else made from a float16
    (or the recipe's `dtype`) copy of the full-precision model and scored now."""
    out = []
    for name, make, kwargs in recipes:
        kwargs = dict(kwargs)
        dtype = kwargs.pop("dtype", mx.float16)
        done = journal.done(f"mlx-lm {name}")
        if done:
            out += done
            continue
        if protocol.out_of_time():
            out += protocol.failed("mlx-lm", name, "not measured: the run's time limit was reached")
            continue
        try:
            model, seconds = timed(lambda: make(_half(protocol.baseline.model, dtype), protocol.baseline.tokenizer, **kwargs))
            mx.eval(model.parameters())
            if make is not _float16 and not any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules()):
                raise RuntimeError("mlx-lm left the model unquantized")
            bpw = bits_per_weight(model)
            scored = dequantize_model(model)
            scored.set_dtype(mx.float32)  # scored in float32 like every subject
            measured = protocol.score("mlx-lm", name, bpw, scored, seconds)
        except Exception as exc:  # noqa: BLE001 - one failed recipe must not lose a device run's other rows
            measured = protocol.failed("mlx-lm", name, f"{type(exc).__name__}: {exc}")
        out += journal.add(measured)
    return out
