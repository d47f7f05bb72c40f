"""The OpenBLAS kernel choice (core/blas.py): kernels timed in child processes, a kernel the CPU cannot run only
crashes its child, the choice is cached per machine and replaces OpenBLAS's own pick only when clearly faster."""
import os

import pytest

from core import blas

needs_openblas = pytest.mark.skipif(not os.path.exists(blas.LIBRARY),
                                    reason="Debian's OpenBLAS is not installed (./lab installs it)")


def test_candidates_follow_the_instruction_flags():
    assert blas.candidates(set()) == [""]
    assert blas.candidates({"avx2", "fma", "sse4_2"}) == ["", "Haswell", "Zen"]
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}
    assert blas.candidates(avx512) == ["", "Haswell", "Zen", "SkylakeX"]
    assert "Cooperlake" in blas.candidates(avx512 | {"avx512_bf16"})


@needs_openblas
def test_a_kernel_is_timed_and_checked_in_a_child_process():
    kernel, seconds = blas.time_kernel(blas.LIBRARY, "")
    assert kernel and 0 < seconds < 30
    _, flags = blas.cpu_identity()
    if "avx512f" not in flags:  # this CPU cannot run the AVX-512 kernel: its child dies, the caller does not
        assert blas.time_kernel(blas.LIBRARY, "SkylakeX") is None


@needs_openblas
def test_the_choice_is_measured_once_and_only_kept_when_clearly_faster(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_CACHE", str(tmp_path))
    made = blas.choice(fresh=True)
    assert made.detected in made.seconds and all(s > 0 for s in made.seconds.values())
    if made.chosen:
        assert made.seconds[made.chosen] < blas.CLEAR_WIN * made.seconds[made.detected]
    else:
        assert min(made.seconds.values()) >= blas.CLEAR_WIN * made.seconds[made.detected]
    assert list((tmp_path / "blas").glob("*.json"))
    assert blas.choice() == made  # read back from the cache, not measured again


@needs_openblas
def test_the_cli_prints_the_choice_and_the_launcher_value(tmp_path, monkeypatch, capsys):
    from core.cli.parser import main

    monkeypatch.setenv("MLXQ_CACHE", str(tmp_path))
    assert main(["blas"]) == 0
    assert capsys.readouterr().out.startswith("OpenBLAS kernel ")
    assert main(["blas", "--coretype"]) == 0
    assert capsys.readouterr().out.strip() in ("", *blas.KERNELS)


@needs_openblas
@pytest.mark.parametrize("preload", [False, True])
def test_openblas_counts_only_when_mlx_calls_it(preload):
    """NumPy's own OpenBLAS (loaded privately, other symbol names) once made the check say yes without the preload."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = blas.LIBRARY
    proc = subprocess.run([sys.executable, "-c", "import numpy, core.runtime as r; print(r.openblas_active())"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == str(preload), proc.stderr
