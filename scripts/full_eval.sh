#!/usr/bin/env bash
# Full-test-set quality numbers (docs/results.md): every ResNet and SmolLM2 at each bit width, as CSVs.
# Quality comes from the de-quantized weights (proven equal to the quantized kernels by the tests);
# a second pass benchmarks speed and memory with the real quantized kernels. Usage: scripts/full_eval.sh [OUT_DIR]
set -uo pipefail
out=${1:-cache/sweeps}
mkdir -p "$out"
py=${PYTHON:-python3}
run() { echo "== $*" >&2; "$py" -m core sweep "$@" || echo "FAILED: $*" >&2; }

for m in resnet20 resnet32 resnet44 resnet56; do
  run --model $m --q-bits 16,8,6,5,4,3 --eval-path dequant --no-bench --out "$out/$m-g64.csv"
  run --model $m --q-bits 4,3 --q-group-size 32 --eval-path dequant --no-bench --out "$out/$m-g32.csv"
done
lm=smollm2-135m-instruct
run --model $lm --q-bits 16,8,6,4,3 --eval-path dequant --no-bench --out "$out/$lm-g64.csv"
run --model $lm --q-bits 4 --q-group-size 32 --eval-path dequant --no-bench --out "$out/$lm-q4g32.csv"
run --model $lm --q-bits 4 --q-group-size 32 --keep-first --eval-path dequant --no-bench --out "$out/$lm-q4g32-keepfirst.csv"
run --model $lm --q-bits 4 --q-group-size 32 --keep-first --q-quantizer mlx --eval-path dequant --no-bench --out "$out/$lm-q4g32-keepfirst-mlx.csv"
# Speed and memory with the deployed (quantized-kernel) models.
for m in resnet20 resnet56; do run --model $m --q-bits 16,8,4 --limit 1000 --out "$out/$m-bench.csv"; done
run --model $lm --q-bits 16,8,4 --limit 8 --bench-prefill 512 --bench-decode 64 --out "$out/$lm-bench.csv"
