"""mlx-lm's GPTQ on a model folder with the lab's calibration tokens, for the `scale` bench section:
`python -m core.eval.mlx_lm_gptq FOLDER CHUNKS` (run under core.eval.measured for its peak memory).

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


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
