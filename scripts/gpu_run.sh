#!/usr/bin/env bash
# On the GPU host, from the checkout root, after scripts/gpu_stage.sh's parts have arrived (.gpu/p1 and .gpu/p2
# through ../shared/device's stage1.sh/stage2.sh, .gpu/deps, .gpu/gguf-a, .gpu/gguf-b): install the server's
# dependencies beside MLX in /tmp/site, rebuild the GGUF, convert SmolLM2 and run the bench sections given.
# Usage: scripts/gpu_run.sh SECTIONS OUT_DIR   (e.g. scripts/gpu_run.sh serving "$OUT/bench")
set -euo pipefail
cd "$(dirname "$0")/.."
sections=${1:?sections}; out=${2:?output folder}
python3 -m pip install -q --no-index --no-compile --target /tmp/site --find-links .gpu/deps \
  fastapi uvicorn python-multipart outlines-core 2>&1 | grep -v "WARNING: Target directory" || true
mkdir -p /root/gguf
cat .gpu/gguf-a/gguf-part.00 .gpu/gguf-b/gguf-part.01 > /root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
test "$(sha256sum /root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf | cut -d' ' -f1)" = "$(cat .gpu/gguf-b/sha256)"
export PYTHONPATH=/tmp/site MLXQ_SMOLLM2_GGUF=/root/gguf/SmolLM2-135M-Instruct.Q4_1.gguf MLXQ_CACHE=/root/mlxq-cache
python3 -m core prepare
python3 -m core bench --sections "$sections" --out "$out"
