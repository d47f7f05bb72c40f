"""How precision changes: quantization specs and grids, quantized layers, the methods (round-to-nearest, GPTQ,
AWQ, mixed precision) with their calibration, and `recipe.quantize`, the one path from a config to a model."""
