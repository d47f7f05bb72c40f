"""How much memory quantizing, evaluating and serving a language model will take, before any of it runs.

Every prediction is arithmetic on the model's config.json and the chosen widths, in the terms the lab's code
holds at its peak (core.quant.streamed, core.eval.blockwise, the server's KV cache): the packed model, the one
piece held in full precision, calibration activations, the heads and logits of a scoring batch. The constants
below are what those steps hold per element as the code is written; the bench's `scale` section measures the
peak beside each prediction, so a change that moves the peak shows up there."""
from __future__ import annotations

from dataclasses import dataclass

from core.errors import LabError
from core.quant.spec import QuantSpec

GB = 1e9
MAC_SIZES_GB = (8, 16, 24, 32, 64, 128)
# A Mac's GPU may wire about three quarters of unified memory (MLX's recommended working set); the rest is the
# system's and other programs'. A prediction fits a machine when it is within that share.
USABLE_SHARE = 0.75
PROCESS_BYTES = 0.40 * GB  # Python, MLX, mlx-lm, the tokenizer and the tokenized test text, before any weights
BARE_PROCESS_BYTES = 0.15 * GB  # the same without any tokenized text (round-to-nearest reads none)
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_LOGIT_ARRAYS = 6  # vocabulary-wide float32 arrays per scored position alive at once (logits, log-softmax, KL)
_STAGES = ("quantize", "evaluate", "serve")
HEAD_ROWS = 128  # positions scored at once by blockwise evaluation (core.eval.blockwise)
HIDDEN_BUDGET_BYTES = 256 << 20  # one model's hidden states of a window group (core.eval.blockwise)
# A calibration pass through one block (GPTQ) takes as many sequences as keep its largest activations within this.
CALIBRATION_BATCH_BYTES = 256 << 20
MAX_CALIBRATION_BATCH = 8


def _sequence_activations(ctx: int, widest: int, heads: int) -> int:
    return ctx * (3 * widest + 2 * heads * ctx) * 4


def calibration_batch_bytes(ctx: int, widest: int, heads: int, parallel: int = 1) -> tuple[int, int]:
    """(sequences per batch of a calibration pass, the bytes of the activations of the `parallel` batches run at
    once) for sequences of `ctx` tokens through a block whose widest layer has `widest` outputs (three such in an
    MLP) and `heads` attention heads (their scores and weights), in float32."""
    per_sequence = _sequence_activations(ctx, widest, heads)
    batch = max(1, min(MAX_CALIBRATION_BATCH, CALIBRATION_BATCH_BYTES // (parallel * per_sequence)))
    return batch, parallel * batch * per_sequence


@dataclass(frozen=True)
class Shape:
    """What the footprint depends on, from an mlx-lm config.json."""

    hidden: int
    layers: int
    mlp: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    stored_bytes: int  # per weight as the checkpoint stores it (packed checkpoints: their bits / 8)

    @classmethod
    def from_config(cls, config: dict) -> "Shape":
        c = {**config.get("text_config", {}), **config}
        try:
            hidden, heads = int(c["hidden_size"]), int(c["num_attention_heads"])
            quant = c.get("quantization") or {}
            stored = quant.get("bits", 16) / 8 if quant else DTYPE_BYTES.get(c.get("torch_dtype"), 2)
            return cls(hidden, int(c["num_hidden_layers"]), int(c["intermediate_size"]), heads,
                       int(c.get("num_key_value_heads") or heads), int(c.get("head_dim") or hidden // heads),
                       int(c["vocab_size"]), bool(c.get("tie_word_embeddings", True)), stored)
        except (KeyError, TypeError, ValueError) as cause:
            raise LabError(f"The model's config.json lacks what a memory estimate needs ({cause}).") from cause

    def block_matrices(self) -> list[tuple[int, int]]:
        """(rows, K) of each linear layer of one block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, m = self.hidden, self.mlp
        return [(q, h), (kv, h), (kv, h), (h, q), (m, h), (m, h), (h, m)]

    def block_weights(self) -> int:
        return sum(r * k for r, k in self.block_matrices())

    def parameters(self) -> int:
        embed = self.vocab * self.hidden
        return embed * (1 if self.tied else 2) + self.layers * (self.block_weights() + 2 * self.hidden) + self.hidden


def matrix_bytes(rows: int, k: int, spec: QuantSpec, dtype: str) -> int:
    """A weight as deployed: packed integers plus a scale (and a bias, affine) per group, or float."""
    if spec.full_precision or k % spec.group_size:
        return rows * k * DTYPE_BYTES[dtype]
    per_group = 4 if spec.mode == "affine" else 1  # a 16-bit scale and bias, or one 8-bit shared exponent
    return rows * k * spec.bits // 8 + rows * (k // spec.group_size) * per_group


def model_bytes(shape: Shape, spec: QuantSpec, dtype: str) -> int:
    """The quantized model as deployed in `dtype`: every weight layer at `spec`, norms in `dtype`."""
    blocks = shape.layers * (sum(matrix_bytes(r, k, spec, dtype) for r, k in shape.block_matrices())
                             + 2 * shape.hidden * DTYPE_BYTES[dtype])
    embed = matrix_bytes(shape.vocab, shape.hidden, spec, dtype)
    return blocks + embed * (1 if shape.tied else 2) + shape.hidden * DTYPE_BYTES[dtype]


@dataclass(frozen=True)
class Footprint:
    stage: str
    peak_bytes: float  # the whole process
    parts: dict  # name -> bytes: what the peak is made of

    def verdicts(self) -> dict[int, bool]:
        """Mac memory size (GB) -> whether this stage fits it."""
        return {size: self.peak_bytes <= USABLE_SHARE * size * GB for size in MAC_SIZES_GB}


def predict(shape: Shape, spec: QuantSpec, method: str = "rtn", calib: int = 0, ctx: int = 512,
            windows: int = 2, streams: int = 1, context: int = 4096, dtype: str = "float32",
            parallel: int = 1) -> list[Footprint]:
    """The predicted peak of each stage: quantize, evaluate (perplexity + KL on `windows` chunks of `ctx`),
    serve (`streams` sequences of `context` tokens, KV cache in `dtype`). `parallel`: scoring steps computed at
    once (core.parallel runs one per CPU stream)."""
    largest = max(shape.vocab * shape.hidden, shape.block_weights())
    scoring = {"logits of a scoring step": parallel * HEAD_ROWS * shape.vocab * 4 * _LOGIT_ARRAYS,
               "hidden states": 2 * min(windows, window_group(ctx, shape.hidden)) * ctx * shape.hidden * 4}
    if spec.full_precision:  # nothing to quantize; evaluation reads one piece at a time and has one head
        quantize = {"process": PROCESS_BYTES}
        evaluate = {"process": PROCESS_BYTES, "piece being read": largest * (shape.stored_bytes + 4),
                    "head in float32": shape.vocab * shape.hidden * 4, **scoring}
    else:
        packed = model_bytes(shape, spec, "float32")
        quantize = _quantize_parts(shape, packed, method, calib, ctx)
        evaluate = {"process": PROCESS_BYTES, "packed model": packed,
                    "heads in float32": 2 * shape.vocab * shape.hidden * 4, **scoring}  # the reference's and the model's
    kv = streams * context * shape.layers * 2 * shape.kv_heads * shape.head_dim * DTYPE_BYTES[dtype]
    serve = {"process": PROCESS_BYTES, "model": model_bytes(shape, spec, dtype), "KV cache": kv,
             "prefill activations": min(context, 2048) * (shape.mlp * 3 + shape.vocab) * DTYPE_BYTES[dtype]}
    evaluate = max(evaluate, quantize, key=lambda parts: sum(parts.values()))  # it quantizes first
    return [Footprint(name, sum(parts.values()), parts) for name, parts in zip(_STAGES, (quantize, evaluate, serve))]


def window_group(ctx: int, hidden: int, budget: int = HIDDEN_BUDGET_BYTES) -> int:
    """How many windows blockwise scoring takes through the model at once: their hidden states within `budget`."""
    return max(1, budget // (ctx * hidden * 4))


def _piece(weights: int, largest_rows: int, shape: Shape) -> int:
    """A piece being quantized: its float32 copy, and the larger of its stored copy (while it is cast) and the
    grid's temporaries for one tensor (8192 rows at a time, core.quant.quantizers)."""
    return weights * 4 + max(weights * shape.stored_bytes, min(largest_rows, 8192) * shape.hidden * 8)


def _quantize_parts(shape: Shape, packed: int, method: str, calib: int, ctx: int) -> dict:
    """The larger of the two phases of quantizing: the embedding (first, nothing packed yet) and the last block
    (everything else packed), with what the method holds then."""
    base = PROCESS_BYTES if method != "rtn" else BARE_PROCESS_BYTES  # calibrated methods tokenize their text
    embedding = {"process": base, "embedding being quantized": _piece(shape.vocab * shape.hidden, shape.vocab, shape)}
    block = {"process": base, "packed model": packed,
             "block being quantized": _piece(shape.block_weights(), shape.mlp, shape),
             **_method_parts(shape, method, calib, ctx)}
    return max(embedding, block, key=lambda parts: sum(parts.values()))


def _method_parts(shape: Shape, method: str, calib: int, ctx: int) -> dict:
    """What a method holds beside the packed model and the piece being quantized."""
    if method in ("mixed", "dwq"):  # these still run on the whole float32 model
        copies = 2 if method == "dwq" else 1  # distillation's teacher beside its student
        return {"whole model in float32": copies * shape.parameters() * 4}
    if method not in ("gptq", "awq"):
        return {}
    tokens = calib * ctx
    h, m = shape.hidden, shape.mlp
    parts = {"calibration activations": 2 * tokens * h * 4}
    if method == "awq":  # AWQ keeps every layer's recorded inputs; mlx-lm's passes take their own batches
        return {**parts, "activations of a calibration batch": 8 * _sequence_activations(ctx, m, shape.heads),
                "recorded inputs": 4 * tokens * (h + m) * 4}
    batch = {"activations of a calibration batch": calibration_batch_bytes(ctx, max(m, h), shape.heads)[1]}
    # GPTQ's three moments, the largest counted: the calibration pass (one Hessian per distinct input: q, k, v
    # share one, gate and up another), the largest input's inverse factor being made (about 2.1 times its
    # Hessian, core.quant.gptq.factor_of) and a column sweep (its factor and three working copies of the weight).
    widths = {k for _, k in shape.block_matrices()}
    hessians = (2 * h * h + shape.heads * shape.head_dim * shape.heads * shape.head_dim + m * m) * 4
    moments = [{**batch, "Hessians": hessians},
               {"inverse factor of the widest input": int(2.1 * max(widths) ** 2 * 4)},
               {"column sweep": max(k * k + 3 * r * k for r, k in shape.block_matrices()) * 4}]
    return {**parts, **max(moments, key=lambda d: sum(d.values()))}


def check_limit(footprints: list[Footprint], stage: str, limit_gb: float | None) -> None:
    """A LabError, before any work, when `stage`'s predicted peak exceeds the memory limit."""
    if not limit_gb:
        return
    chosen = next(f for f in footprints if f.stage == stage)
    if chosen.peak_bytes > limit_gb * GB:
        biggest = max(chosen.parts.items(), key=lambda kv: kv[1])
        noun = {"quantize": "quantization", "evaluate": "evaluation", "serve": "server"}[stage]
        raise LabError(f"This {noun} needs about {chosen.peak_bytes / GB:.1f} GB, more than the memory limit of "
                       f"{limit_gb:g} GB (the largest part: {biggest[0]}, {biggest[1] / GB:.1f} GB). Choose fewer "
                       "bits, a smaller model or less calibration data, or raise --memory-limit.")


def model_shape(name: str) -> Shape | None:
    """The shape of language model `name` (registry name, folder or hub id) from its config.json; None for a
    vision model."""
    import json
    from pathlib import Path

    from core.models.registry import lm_path, resolve

    info = resolve(name)
    if info.kind != "lm":
        return None
    folder = Path(lm_path(info))
    if not folder.is_dir():  # a hub id: mlx-lm's own download (config and weights)
        from mlx_lm.utils import _download

        folder = _download(str(folder))
    return Shape.from_config(json.loads((folder / "config.json").read_text()))


def guard(name: str, stage: str, spec: QuantSpec, method: str = "rtn", **sizes) -> list[Footprint] | None:
    """The predicted footprints of language model `name`; a LabError first when `stage` would exceed the memory
    limit the user set (settings.memory_limit_gb)."""
    from core import settings

    shape = model_shape(name)
    if shape is None:
        return None
    footprints = predict(shape, spec, method, **sizes)
    check_limit(footprints, stage, settings.memory_limit_gb())
    return footprints
