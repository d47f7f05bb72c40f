#!/usr/bin/env bash
# On the GPU host (after scripts/gpu_run.sh's installation): the CPU evaluation of issue 18 on that host's Intel
# Xeon, limited to two cores like the 2-vCPU machines the lab runs on, once with OpenBLAS's own kernel and once
# with the kernel core/blas.py measures fastest, side by side on separate core pairs. Needs Debian's OpenBLAS
# 0.3.21 in .gpu/openblas (libblas.so.3, libopenblas.so.0, libgfortran.so.5, libquadmath.so.0) and a mirror with
# CIFAR-10 test and resnet20 in .gpu/mirror. Usage: scripts/gpu_cpu_kernels.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?output folder}
blas=$PWD/.gpu/openblas
export PYTHONPATH=/tmp/site MLXQ_MIRROR=$PWD/.gpu/mirror MLXQ_DEVICE=cpu MLXQ_CACHE=/root/mlxq-cpu LD_LIBRARY_PATH=$blas
export OPENBLAS_NUM_THREADS=2
chosen=$(python3 - "$blas/libblas.so.3" <<'PY'
import sys
from core import blas
made = blas.choice(sys.argv[1], fresh=True)
print(made.summary(), file=sys.stderr)
print(made.chosen)
PY
)
run() {  # CORES KERNEL: the eval-command section pinned to CORES, OPENBLAS_CORETYPE=KERNEL unless empty
  local env=(LD_PRELOAD="$blas/libblas.so.3")
  [ -n "$2" ] && env+=(OPENBLAS_CORETYPE="$2")
  env "${env[@]}" taskset -c "$1" python3 -m core bench --sections eval-command --out "$out/${2:-own-pick}"
}
run 0,1 "" &
run 2,3 "$chosen" &
wait
