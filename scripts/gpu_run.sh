#!/usr/bin/env bash
# On the GPU host, from the checkout root, once scripts/gpu_stage.sh's parts have arrived: MLX through
# ../shared/device's stage1.sh/stage2.sh (.gpu/p1, .gpu/p2), then this script, which installs the server's
# dependencies (.gpu/deps) beside MLX in /tmp/site, rebuilds the SmolLM2 GGUF from its pieces (copied from
# .gpu/gguf-a, -b, -c into /root/gguf-parts as each arrives), converts it and runs the bench sections with the
# WikiText-2 copy (.gpu/wiki, copied to /root/wiki) as the mirror. Further arguments go to the bench.
# Usage: scripts/gpu_run.sh SECTIONS OUT_DIR [BENCH ARGS]   (e.g. scripts/gpu_run.sh serving "$OUT/bench";
# scripts/gpu_run.sh frontier-lab+frontier-mlx-lm "$OUT" --time-limit 480 runs two processes side by side, each
# reporting to OUT_DIR/<section>/, all packed into OUT_DIR/reports.tgz: the device tool brings back few files).
# FRONTIER_JOURNAL=docs/bench/frontier/h200-runs/journal.jsonl starts every frontier section from that journal, so
# only subjects missing from it are measured.
set -euo pipefail
cd "$(dirname "$0")/.."
sections=${1:?sections}; out=${2:?output folder}; shift 2
export PYTHONPATH=/tmp/site
if ! python3 -c "import fastapi, uvicorn, uvloop, httptools, multipart, outlines_core" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-compile --target /tmp/site --find-links .gpu/deps \
    fastapi uvicorn uvloop httptools python-multipart outlines-core
fi
gguf=/root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ]; then
  mkdir -p /root/gguf
  cat /root/gguf-parts/gguf-part.* > "$gguf"
  test "$(sha256sum "$gguf" | cut -d' ' -f1)" = "$(cat /root/gguf-parts/sha256)"
fi
export MLXQ_SMOLLM2_GGUF=$gguf MLXQ_CACHE=/root/mlxq-cache MLXQ_MIRROR=${MLXQ_MIRROR:-/root/wiki}
python3 -m core prepare
# SECTIONS joined by + run side by side, one process each, reports in OUT_DIR/<sections>/
IFS='+' read -ra parts <<< "$sections"
if [ ${#parts[@]} -eq 1 ]; then
  python3 -m core bench --sections "$sections" --out "$out" "$@"
else
  if [ -n "${FRONTIER_JOURNAL:-}" ]; then stem=$(python3 -c "from core.bench.run import report_stem; print(report_stem())"); fi
  for part in "${parts[@]}"; do
    mkdir -p "$out/$part"
    if [ -n "${FRONTIER_JOURNAL:-}" ]; then cp "$FRONTIER_JOURNAL" "$out/$part/$stem-$part.jsonl"; fi
    python3 -m core bench --sections "$part" --out "$out/$part" "$@" > "$out/$part/log" 2>&1 &
  done
  wait
  (cd "$out" && tar czf reports.tgz "${parts[@]}" && rm -rf "${parts[@]}")
fi
