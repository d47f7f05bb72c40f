#!/usr/bin/env bash
# Issue 18 on the GPU host's CPU (two cores of it): the lab's BLAS choice, the bench's eval-command section as
# ./lab would run it, the eval command on the other library, and where the time goes. Output: stdout, $OUT/bench.
set -uo pipefail
cd "$(dirname "$0")/../.."
here=.gpu/cpu18; probes=scripts/cpu_host/probes
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $here/*.whl 2>&1 | tail -2
OBD=/usr/lib/x86_64-linux-gnu/openblas-pthread; BLD=/usr/lib/x86_64-linux-gnu/blis-pthread
mkdir -p $OBD $BLD /tmp/blas && tar xJf $here/openblas.tar.xz -C /tmp/blas && cp /tmp/blas/openblas/* $OBD/ \
  && xz -dc $here/libblis.so.4.xz > $BLD/libblis.so.4
export PYTHONPATH=/tmp/site:$PWD MLXQ_MIRROR=$PWD/.gpu/mirror MLXQ_DEVICE=cpu MLXQ_CACHE=/tmp/mlxq LD_LIBRARY_PATH=$OBD
OB=$OBD/libblas.so.3; BL=$BLD/libblis.so.4
lscpu | grep -E "Model name|Model:|Thread|Core|Socket|L1d|L2|L3" | cut -c1-120
for c in 0 1 2 3; do echo "cpu$c siblings $(cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list) core $(cat /sys/devices/system/cpu/cpu$c/topology/core_id)"; done
P="taskset -c ${PAIR:-0,1}"
echo "== the lab's probe, two cores"; $P python3 -m core blas --fresh
read -r lib core <<< "$($P python3 -m core blas --preload)"; echo "preload $lib $core"
env LD_PRELOAD=$BL BLIS_ARCH_DEBUG=1 python3 $probes/blisarch.py 2>&1 | tail -2
labenv=(LD_PRELOAD=$lib BLIS_NUM_THREADS=2); [ "$core" != - ] && labenv+=(OPENBLAS_CORETYPE=$core)
echo "== bench eval-command as ./lab runs it"
env "${labenv[@]}" $P python3 -m core bench --sections eval-command --out "$OUT/bench" 2>&1 | tail -2; cat "$OUT"/bench/*.md | tail -4
obs() { env LD_PRELOAD=$OB OPENBLAS_NUM_THREADS=2 OPENBLAS_CORETYPE=SkylakeX "$@"; }
bl()  { env LD_PRELOAD=$BL BLIS_NUM_THREADS=2 "$@"; }
for k in obs bl; do echo "== eval command $k"; s=$(date +%s.%N)
  $k $P python3 -m core eval --model resnet20 --q-bits 4 --q-group-size 32 --no-cache --no-bench --json > /tmp/ev.json 2>/tmp/ev.err || tail -5 /tmp/ev.err
  e=$(date +%s.%N); head -c 100 /tmp/ev.json; echo; echo "seconds $(python3 -c "print(round($e - $s, 1))")"; done
for k in obs bl; do echo "== segments $k"; $k $P python3 $probes/seg.py 2>&1 | grep -v HUB; done
echo "== sgemm, one thread on cpu0 alone, then cpu0 and cpu1 at once (SMT siblings halve)"
obs taskset -c 0 python3 $probes/gemm1.py 1
obs taskset -c 0 python3 $probes/gemm1.py 1 & obs taskset -c 1 python3 $probes/gemm1.py 1; wait
for k in obs bl; do echo "== ops $k"; $k timeout 60 $P python3 $probes/ops.py 2>&1; done
for k in obs bl; do echo "== plain 2000 $k"; $k timeout 60 $P python3 $probes/plain.py 2000; done
