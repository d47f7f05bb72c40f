#!/usr/bin/env bash
# Calibrated methods against round-to-nearest on the full test sets (the table in docs/methods.md):
# SmolLM2 on all of WikiText-2 test, at 4 and 3 bits (group 64) and a mixed-precision recipe at 4.5 bits/weight.
# Calibration: WikiText-2 validation (never the test set). Usage: scripts/methods_eval.sh [OUT_DIR] [CALIB_CHUNKS]
set -uo pipefail
out=${1:-cache/sweeps}
calib=${2:-16}
mkdir -p "$out"
py=${PYTHON:-python3}
lm=smollm2-135m-instruct
run() { echo "== $*" >&2; local t=$SECONDS; "$py" -m core sweep "$@" || echo "FAILED: $*" >&2; echo "   $((SECONDS - t)) s" >&2; }
common=(--model $lm --eval-path dequant --no-bench)
run "${common[@]}" --q-bits 4,3 --method rtn --out "$out/$lm-rtn.csv"
run "${common[@]}" --q-bits 4,3 --method awq --calib "$calib" --out "$out/$lm-awq.csv"
run "${common[@]}" --q-bits 4,3 --method gptq --calib "$calib" --out "$out/$lm-gptq.csv"
run "${common[@]}" --q-bits 3 --method mixed --target-bpw 4.5 --calib "$calib" --out "$out/$lm-mixed4.5.csv"
