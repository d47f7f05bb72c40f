#!/usr/bin/env bash
# Stage a CPU-only run on the borrowed GPU host (issue 18: the lab's CPU path on that host's Intel Xeon), one
# device call's worth (under 64 MiB) in the ignored .gpu/: MLX's CPU wheels for Python 3.12 with mlx-lm, Debian's
# OpenBLAS and BLIS as installed here, and the CIFAR-10 test set with resnet20 from the mirror. Then, with
# carry [".gpu/cpu18", ".gpu/mirror"]: `bash scripts/cpu_host/run.sh` (the lab's choice, the bench's eval-command
# section, where a batch's time goes) and `bash scripts/cpu_host/run_more.sh` (formulations, streams, chunking).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.gpu/cpu18 mirror=${MLXQ_MIRROR:-../shared}
mkdir -p "$out" .gpu/mirror/data/cifar10 .gpu/mirror/models/resnet-cifar10
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_35_x86_64 -d "$out" mlx==0.32.4 mlx-cpu==0.32.4 mlx-lm==0.32.2
libs=$(mktemp -d) && mkdir "$libs/openblas"
cp -L /usr/lib/x86_64-linux-gnu/openblas-pthread/{libblas.so.3,libopenblas.so.0} \
  /usr/lib/x86_64-linux-gnu/{libgfortran.so.5,libquadmath.so.0} "$libs/openblas/"
tar cJf "$out/openblas.tar.xz" -C "$libs" openblas && rm -rf "$libs"
xz -9 -c /usr/lib/x86_64-linux-gnu/blis-pthread/libblis.so.4 > "$out/libblis.so.4.xz"
cp "$mirror/data/cifar10/cifar10_test.npz" .gpu/mirror/data/cifar10/
cp "$mirror/models/resnet-cifar10/resnet20.safetensors" .gpu/mirror/models/resnet-cifar10/
du -sbc "$out" .gpu/mirror
