#!/usr/bin/env bash
# Stage what a bench run on the offline GPU host needs, in parts of under 64 MiB (the device tool's limit per
# call), all under the ignored .gpu/: MLX's CUDA wheels (../shared/device/prepare.sh: .gpu/p1, .gpu/p2), the
# server's Python dependencies for Python 3.12 (.gpu/deps) and the SmolLM2 GGUF in two halves (.gpu/gguf-a,
# .gpu/gguf-b; copy each into /root/gguf-parts on the host as it arrives). On the host, scripts/gpu_run.sh
# installs and runs. Usage: scripts/gpu_stage.sh
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
rm -rf .gpu/gguf-a .gpu/gguf-b && mkdir -p .gpu/gguf-a .gpu/gguf-b
split -n 2 -d "$gguf" .gpu/gguf-part.
mv .gpu/gguf-part.00 .gpu/gguf-a/ && mv .gpu/gguf-part.01 .gpu/gguf-b/
sha256sum "$gguf" | cut -d' ' -f1 > .gpu/gguf-b/sha256
du -sh .gpu/p1 .gpu/p2 .gpu/deps .gpu/gguf-a .gpu/gguf-b
