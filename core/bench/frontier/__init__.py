"""The quality frontier: the lab's recipes against llama.cpp's types and mlx-lm's recipes on one model, one set of
token windows and one full-precision reference (perplexity, KL(full precision || quantized), bits per weight).

- protocol.py: the windows, the reference, the text that names them, and the journal that keeps each measured
  subject (a stopped run resumes where it stopped).
- lab_recipes.py, mlx_lm_recipes.py: the MLX subjects, each a quantized model scored by the lab's evaluator.
- llama_types.py: llama.cpp's types, made and scored by llama.cpp itself.
- section.py: the bench sections: `frontier` (everything) and its parts `frontier-lab`, `frontier-mixed`,
  `frontier-dwq`, `frontier-mlx-lm`, `frontier-llama`."""
