#!/usr/bin/env bash
# Stage what a bench run on the offline GPU host needs, in parts of under 64 MiB (the device tool's limit per
# call), all under the ignored .gpu/: MLX's CUDA wheels (../shared/device/prepare.sh: .gpu/p1, .gpu/p2), the
# server's Python dependencies for Python 3.12 (.gpu/deps), WikiText-2 from the mirror (.gpu/wiki) and the
# SmolLM2 GGUF in three pieces sized to ride with them (.gpu/gguf-a, -b, -c; copy each into /root/gguf-parts on
# the host as it arrives). Three calls: p1+deps+wiki+gguf-a, p2+gguf-b, gguf-c (then scripts/gpu_run.sh, which
# installs and runs). Usage: scripts/gpu_stage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash ../shared/device/prepare.sh
plat=(--platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
rm -rf .gpu/deps && mkdir -p .gpu/deps
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .gpu/deps \
  "fastapi>=0.115" "uvicorn>=0.30" "uvloop>=0.19" "httptools>=0.6" "python-multipart>=0.0.9" \
  "outlines-core==0.2.14"
gguf=$(.venv/bin/python -c "from core import settings; from core.models.gguf import find_or_fetch_smollm2_gguf as f; print(f(settings.cache_root() / 'downloads'))")
rm -rf .gpu/wiki && mkdir -p .gpu/wiki/data
cp -r "${MLXQ_MIRROR:-../shared}/data/wikitext-2" "${MLXQ_MIRROR:-../shared}/data/wikitext-2-raw" .gpu/wiki/data/
rm -rf .gpu/gguf-a .gpu/gguf-b .gpu/gguf-c && mkdir -p .gpu/gguf-a .gpu/gguf-b .gpu/gguf-c
dd if="$gguf" of=.gpu/gguf-a/gguf-part.00 bs=1000000 count=8 status=none
dd if="$gguf" of=.gpu/gguf-b/gguf-part.01 bs=1000000 skip=8 count=28 status=none
dd if="$gguf" of=.gpu/gguf-c/gguf-part.02 bs=1000000 skip=36 status=none
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/gguf-c/sha256
du -sbc .gpu/p1 .gpu/deps .gpu/wiki .gpu/gguf-a; du -sbc .gpu/p2 .gpu/gguf-b; du -sbc .gpu/gguf-c
