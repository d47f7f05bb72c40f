"""Benchmark reports: the lab beside its peers (mlx-lm, llama.cpp, the plain MLX path), every figure measured side by
side in one run and written as CSV plus markdown (`python -m core bench`). core.eval measures one configuration;
this package compares.

- run.py: the driver: SECTIONS (section name -> the function that measures it), report_stem, run_bench.
- rows.py: BenchRow (one figure) and best_of, the timing helper every section shares.
- eval_speed.py (`resnet`, `eval-command`, `ppl`, `ppl-kl`, `full-eval`), blas_eval.py (`blas-eval`),
  decode.py (`decode`, `decode-ceiling`), llamacpp_peer.py (`llama-cpp`, and llama.cpp scored by the lab's
  protocol), serving.py (`serving`), scale_out.py (`scale-out`, `scale-out-lm`), scale.py (`scale` and its parts),
  frontier/ (`frontier` and its parts).
- peak_memory.py, mlx_lm_peer.py: run as child processes (`python -m core.bench.peak_memory MODULE ARGS`,
  `python -m core.bench.mlx_lm_peer`) for the peak memory of one run and mlx-lm's side of the `scale` section."""
