"""mlx-lm on a model folder, for the `scale` bench section (run under core.bench.peak_memory for the peak memory):
`python -m core.bench.mlx_lm_peer FOLDER CHUNKS` runs mlx-lm's GPTQ with the lab's calibration tokens;
`python -m core.bench.mlx_lm_peer --load FOLDER` loads the folder with mlx-lm and generates from it.

mlx-lm's own command line fetches its calibration text from the hub; here it gets the lab's GPTQ calibration
(`CHUNKS` chunks of 512 tokens of WikiText-2 validation), 4 bits, group 64, and 4-bit group-64 round-to-nearest
for the layers it does not calibrate (the embedding), as the lab does."""
from __future__ import annotations

import sys
import time

import mlx.core as mx
from mlx.utils import tree_flatten


def main(folder: str, chunks: int) -> None:
    from mlx_lm import load
    from mlx_lm.quant.gptq import gptq_quantize

    from core.quant.calibration import calibration_tokens

    model, tokenizer = load(folder, lazy=True)
    data = calibration_tokens(tokenizer, chunks, 512)
    started = time.perf_counter()
    model, _ = gptq_quantize(model, data, 4, 64, fallback_bits=4, fallback_group_size=64)
    mx.eval(model.parameters())
    size = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    print(f"mlx-lm gptq_quantize: {time.perf_counter() - started:.1f} s, {size / 1e9:.3f} GB quantized")


def load_and_generate(folder: str) -> None:
    """The check that mlx-lm itself loads a folder and generates from it."""
    from mlx_lm import generate, load

    model, tokenizer = load(folder)
    text = generate(model, tokenizer, "The sea is", max_tokens=16)
    print(f"mlx_lm generated {len(tokenizer.encode(text))} tokens")


if __name__ == "__main__":
    if sys.argv[1] == "--load":
        load_and_generate(sys.argv[2])
    else:
        main(sys.argv[1], int(sys.argv[2]))
