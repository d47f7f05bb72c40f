#!/usr/bin/env bash
set -uo pipefail
cd "$(dirname "$0")/../.."
here=.gpu/cpu18; probes=scripts/cpu_host/probes
if ! [ -e /tmp/site/mlx ]; then python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $here/*.whl; fi
OBD=/usr/lib/x86_64-linux-gnu/openblas-pthread; BLD=/usr/lib/x86_64-linux-gnu/blis-pthread
if ! [ -e $BLD/libblis.so.4 ]; then mkdir -p $OBD $BLD /tmp/blas && tar xJf $here/openblas.tar.xz -C /tmp/blas && cp /tmp/blas/openblas/* $OBD/ && xz -dc $here/libblis.so.4.xz > $BLD/libblis.so.4; fi
export PYTHONPATH=/tmp/site:$PWD MLXQ_MIRROR=$PWD/.gpu/mirror MLXQ_DEVICE=cpu MLXQ_CACHE=/tmp/mlxq LD_LIBRARY_PATH=$OBD
for k in "LD_PRELOAD=$OBD/libblas.so.3 OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=2" "LD_PRELOAD=$BLD/libblis.so.4 BLIS_NUM_THREADS=2"; do echo "== chunks $k"; env $k taskset -c 0,1 timeout 100 python3 $probes/chunk.py; done
for k in "LD_PRELOAD=$OBD/libblas.so.3 OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=2" "LD_PRELOAD=$BLD/libblis.so.4 BLIS_NUM_THREADS=2"; do
  echo "== $k"; env $k taskset -c 0,1 timeout 100 python3 $probes/ops2.py; env $k taskset -c 0,1 timeout 100 python3 $probes/prof1.py 2>&1 | grep -v HUB
  env $k taskset -c 0,1 timeout 60 python3 $probes/ops.py 2>&1 | grep -E "stage|nine addmm|bias|residual|stride-2"
done
