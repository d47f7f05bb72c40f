"""Gradients of MLX's quantized matmul with respect to its scales and biases, on every device this machine has,
against the same gradients through an explicit de-quantize + matmul (what they must equal). Distillation (the
lab's DWQ and mlx-lm's) trains through them; mlx-lm's DWQ made SmolLM2 worse on the H200 (docs/results.md, "Against the
ecosystem"), and this is the first thing to check on a GPU. Usage: python scripts/qmm_grad_check.py"""
import mlx.core as mx
import mlx.nn as nn

mx.random.seed(0)
for dtype in (mx.float32, mx.float16, mx.bfloat16):
    w = mx.random.normal((256, 512)) * 0.05
    wq, scales, biases = mx.quantize(w, group_size=64, bits=4)
    scales, biases = scales.astype(dtype), biases.astype(dtype)
    x = mx.random.normal((8, 512)).astype(dtype)
    t = mx.random.normal((8, 256)).astype(dtype)

    def qmm(s, b):
        y = mx.quantized_matmul(x, wq, s, b, transpose=True, group_size=64, bits=4)
        return ((y - t).astype(mx.float32) ** 2).sum()

    def deq(s, b):
        y = x @ mx.dequantize(wq, s, b, group_size=64, bits=4).T
        return ((y - t).astype(mx.float32) ** 2).sum()

    for device in ((mx.gpu, mx.cpu) if mx.is_available(mx.gpu) else (mx.cpu,)):
        with mx.stream(device):
            g1 = mx.grad(qmm, argnums=(0, 1))(scales, biases)
            g2 = mx.grad(deq, argnums=(0, 1))(scales, biases)
            mx.eval(g1, g2)
            rel = [float(mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max() /
                         (mx.abs(b.astype(mx.float32)).max() + 1e-12)) for a, b in zip(g1, g2)]
            print(dtype, device, "max relative difference (scales, biases):", [f"{r:.3g}" for r in rel], flush=True)
