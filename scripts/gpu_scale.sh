#!/usr/bin/env bash
# The `scale` bench section on the GPU host: a random-weight model of Llama-3.1-8B's shape, made there (never
# transferred), quantized, evaluated, exported and served. Staging (here): `scripts/gpu_scale.sh stage` writes
# .gpu/p1 and .gpu/p2 (MLX's CUDA wheels, ../shared/device/prepare.sh), .gpu/deps (the server's dependencies for
# Python 3.12), .gpu/wiki (WikiText-2 from the mirror) and .gpu/tok (SmolLM2's tokenizer files). On the host:
# call 1 carries .gpu/p1 .gpu/deps .gpu/wiki .gpu/tok and runs `bash .gpu/p1/stage1.sh && scripts/gpu_scale.sh keep`;
# call 2 carries .gpu/p2 and runs `bash .gpu/p2/stage2.sh && scripts/gpu_scale.sh run rtn+gptq $OUT`; later calls
# `scripts/gpu_scale.sh run PARTS $OUT` with PARTS from rtn, gptq, awq, export, peers, serve (joined by +).
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:?stage | keep | run PARTS OUT}" in
  stage)
    bash ../shared/device/prepare.sh
    rm -rf .gpu/deps .gpu/wiki .gpu/tok && mkdir -p .gpu/deps .gpu/wiki/data .gpu/tok
    python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/deps \
      "fastapi>=0.115" "uvicorn>=0.30" "uvloop>=0.19" "httptools>=0.6" "python-multipart>=0.0.9" "outlines-core==0.2.14"
    cp -r "${MLXQ_MIRROR:-../shared}/data/wikitext-2" "${MLXQ_MIRROR:-../shared}/data/wikitext-2-raw" .gpu/wiki/data/
    tok=$(.venv/bin/python -c "from core import settings; from core.models.gguf import prepare_smollm2 as p; print(p(settings.cache_root()))")
    cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$tok"/special_tokens_map.json .gpu/tok/
    du -sbc .gpu/p1 .gpu/deps .gpu/wiki .gpu/tok; du -sbc .gpu/p2 ;;
  keep)  # the first call's parts outlive its working tree
    mkdir -p /root/scale && cp -r .gpu/deps .gpu/wiki .gpu/tok /root/scale/ ;;
  run)
    parts=${2:?parts}; out=${3:?output folder}
    export PYTHONPATH=/tmp/site MLXQ_CACHE=/root/mlxq-cache MLXQ_MIRROR=/root/scale/wiki
    if ! python3 -c "import fastapi, uvicorn, uvloop, httptools, multipart, outlines_core" 2>/dev/null; then
      python3 -m pip install -q --no-index --no-compile --target /tmp/site --find-links /root/scale/deps \
        fastapi uvicorn uvloop httptools python-multipart outlines-core
    fi
    model=$MLXQ_CACHE/scale/llama-3.1-8b
    [ -f "$model/config.json" ] || python3 -m core make-model --shape llama-3.1-8b --out "$model" --tokenizer /root/scale/tok
    IFS='+' read -ra each <<< "$parts"
    for part in "${each[@]}"; do
      mkdir -p "$out/$part"
      python3 -m core bench --sections "scale-$part" --out "$out/$part" --quick
    done ;;
esac
