"""Where one block's GPTQ time goes, on whatever MLX device runs it: a llama block of a real shape with random
weights, random calibration activations of the default size, and the wall time of each stage of
core.quant.gptq.gptq_block (the calibration pass that collects the Hessians, each inverse factor, each layer's
sweep) and of the pass that makes the next block's inputs.

Usage: python scripts/gptq_profile.py [--shape llama-3.2-1b] [--chunks 32] [--ctx 512] [--bits 4] [--group 64]"""
from __future__ import annotations

import argparse
import time

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models import llama
from mlx_lm.models.base import create_attention_mask

from core import runtime
from core.models.synthetic import SHAPES
from core.quant import gptq
from core.quant.spec import QuantSpec


def _timed(label: str, fn, times: dict):
    start = time.perf_counter()
    out = fn()
    times[label] = times.get(label, 0.0) + time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group", type=int, default=64)
    args = parser.parse_args()
    runtime.configure_process()
    dims = SHAPES[args.shape]
    config = llama.ModelArgs(model_type="llama", vocab_size=64, rms_norm_eps=1e-5, **dims)
    mx.random.seed(0)
    block = llama.TransformerBlock(config)
    block.update(tree_map(lambda p: mx.random.normal(p.shape) * 0.02, block.parameters()))
    x = mx.random.normal((args.chunks, args.ctx, dims["hidden_size"]))
    mx.eval(block.parameters(), x)
    mask = create_attention_mask(x, None)
    spec = QuantSpec(bits=args.bits, group_size=args.group)
    times: dict[str, float] = {}
    # gptq_block's stages, timed one by one: the same calls it makes.
    factor, sweep = gptq.factor_of, gptq.gptq_matrix  # the names gptq_block calls
    gptq.factor_of = lambda held: _timed(f"factor {held[0].shape[0]}", lambda: factor(held), times)
    gptq.gptq_matrix = lambda w, h, s, f: _timed(f"sweep {w.shape[0]}x{w.shape[1]}", lambda: sweep(w, h, s, f),
                                                 times)
    start = time.perf_counter()
    gptq.gptq_block(block, "model.layers.0.", x, mask, spec, set())
    total = time.perf_counter() - start
    after = _timed("next inputs", lambda: mx.eval(mx.concatenate(
        [block(x[i:i + 8], mask) for i in range(0, x.shape[0], 8)])), times)
    del after
    staged = sum(v for k, v in times.items() if k != "next inputs")
    print(f"{args.shape}, {args.chunks} x {args.ctx} tokens, {args.bits}-bit g{args.group}, "
          f"{runtime.describe()['device']}")
    print(f"  calibration pass + Hessians  {total - staged:8.2f} s")
    for label, seconds in times.items():
        print(f"  {label:28s} {seconds:8.2f} s")
    print(f"  block total                  {total + times['next inputs']:8.2f} s")


if __name__ == "__main__":
    main()
