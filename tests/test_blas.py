"""The BLAS choice (core/blas/): candidates timed in child processes, a kernel the CPU cannot run only crashes its
child, the choice is cached per machine and replaces OpenBLAS's own pick only when clearly faster; what the
process runs and its threads (core/blas/loaded.py)."""
import os
import subprocess
import sys

import pytest

from core.blas import choice, probe
from core.blas.choice import Choice, Entry

needs_openblas = pytest.mark.skipif(not os.path.exists(probe.OPENBLAS),
                                    reason="Debian's OpenBLAS is not installed (./lab installs it)")
needs_blis = pytest.mark.skipif(not os.path.exists(probe.BLIS),
                                reason="Debian's BLIS is not installed (./lab installs it)")


def test_kernels_follow_the_instruction_flags():
    assert probe.kernels_for(set()) == [""]
    assert probe.kernels_for({"avx2", "fma", "sse4_2"}) == ["", "Haswell", "Zen"]
    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl"}
    assert probe.kernels_for(avx512) == ["", "Haswell", "Zen", "SkylakeX"]
    assert "Cooperlake" in probe.kernels_for(avx512 | {"avx512_bf16"})


def test_candidates_are_the_installed_libraries_openblas_own_pick_first(tmp_path):
    openblas, blis = tmp_path / "libblas.so.3", tmp_path / "libblis.so.4"
    assert probe.candidates({"avx2", "fma"}, str(openblas), str(blis)) == []
    blis.touch()
    assert [c.label for c in probe.candidates({"avx2", "fma"}, str(openblas), str(blis))] == ["BLIS"]
    openblas.touch()
    found = probe.candidates({"avx2", "fma"}, str(openblas), str(blis))
    assert [c.label for c in found] == ["OpenBLAS", "OpenBLAS Haswell", "OpenBLAS Zen", "BLIS"]


def test_scores_are_geometric_means_of_time_ratios():
    assert probe.relative_score([2.0, 8.0], [1.0, 2.0]) == pytest.approx((2 * 4) ** 0.5, rel=1e-12)
    assert probe.relative_score([1.0, 1.0], [1.0, 1.0]) == pytest.approx(1.0)


def _entries(*scores):
    names = [("OpenBLAS", "Zen", ""), ("OpenBLAS", "Haswell", "Haswell"), ("BLIS", "zen3", "")]
    return [Entry(lib, f"/{lib}", core, kernel, s) for (lib, kernel, core), s in zip(names, scores)]


def test_another_candidate_replaces_the_baseline_only_when_clearly_faster():
    assert Choice("cpu", _entries(1.0, 0.95, 0.93)).best().label == "OpenBLAS Zen"  # within 10 %: keep
    assert Choice("cpu", _entries(1.0, 0.95, 0.6)).best().label == "BLIS zen3"
    assert Choice("cpu", _entries(1.0, 0.8, 0.6)).best("OpenBLAS").label == "OpenBLAS Haswell"
    assert Choice("cpu", _entries(1.0, 0.8, 0.6)).best("MKL") is None
    assert "BLIS zen3 0.60" in Choice("cpu", _entries(1.0, 0.8, 0.6)).summary()


def test_the_launcher_follows_the_settings(monkeypatch, capsys):
    made = Choice("cpu", _entries(1.0, 0.8, 0.6))
    monkeypatch.delenv("MLXQ_BLAS", raising=False)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert choice.for_launcher(made) == ("/BLIS", "")
    monkeypatch.setenv("MLXQ_BLAS", "OpenBLAS")
    assert choice.for_launcher(made) == ("/OpenBLAS", "Haswell")
    monkeypatch.setenv("MLXQ_BLAS", "mkl")
    assert choice.for_launcher(made) == ("/BLIS", "")
    assert "MLXQ_BLAS='mkl' is not one of openblas, blis" in capsys.readouterr().err
    monkeypatch.delenv("MLXQ_BLAS")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "SkylakeX")  # the user's own kernel: OpenBLAS, nothing exported over it
    assert choice.for_launcher(made) == ("/OpenBLAS", "")
    assert choice.for_launcher(Choice("cpu")) is None


def test_a_candidate_is_preloaded_for_a_child_as_the_launcher_would(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")
    blis = Entry("BLIS", "/x/libblis.so.4", "", "zen3", 0.6)
    openblas = Entry("OpenBLAS", "/x/libblas.so.3", "SkylakeX", "SkylakeX", 0.5)
    env = choice.preload_env(blis, 3)
    assert env["LD_PRELOAD"] == "/x/libblis.so.4" and env["BLIS_NUM_THREADS"] == "3"
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_NUM_THREADS" not in env
    env = choice.preload_env(openblas, 3)
    assert env["OPENBLAS_CORETYPE"] == "SkylakeX" and "BLIS_NUM_THREADS" not in env


@needs_openblas
def test_a_candidate_is_timed_and_checked_in_a_child_process():
    kernel, seconds = probe.time_candidate(probe.Candidate("OpenBLAS", probe.OPENBLAS))
    assert kernel and len(seconds) == len(probe.SHAPES) and all(0 < s < 30 for s in seconds)
    _, flags = probe.cpu_identity()
    if "avx512f" not in flags:  # this CPU cannot run the AVX-512 kernel: its child dies, the caller does not
        assert probe.time_candidate(probe.Candidate("OpenBLAS", probe.OPENBLAS, "SkylakeX")) is None


@needs_blis
def test_blis_is_timed_with_its_own_sub_configuration():
    kernel, seconds = probe.time_candidate(probe.Candidate("BLIS", probe.BLIS))
    assert kernel not in ("", "unknown") and all(s > 0 for s in seconds)


@needs_openblas
def test_the_choice_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_CACHE", str(tmp_path))
    made = choice.choice(fresh=True)
    assert made.entries[0].library == "OpenBLAS" and made.entries[0].coretype == ""
    assert made.entries[0].score == pytest.approx(1.0) and all(e.score > 0 for e in made.entries)
    best = made.best()
    assert best is made.entries[0] or best.score < choice.CLEAR_WIN
    assert list((tmp_path / "blas").glob("*.json"))
    assert choice.choice() == made  # read back from the cache, not measured again


@needs_openblas
def test_the_cli_prints_the_choice_and_the_launcher_line(tmp_path, monkeypatch, capsys):
    from core.cli.parser import main

    monkeypatch.setenv("MLXQ_CACHE", str(tmp_path))
    monkeypatch.delenv("MLXQ_BLAS", raising=False)
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    assert main(["blas"]) == 0
    assert "relative to OpenBLAS" in capsys.readouterr().out
    assert main(["blas", "--preload"]) == 0
    path, coretype = capsys.readouterr().out.split()
    assert path in (probe.OPENBLAS, probe.BLIS) and coretype in ("-", *probe.KERNELS)


def _child(code: str, preload: str | None, **env_extra) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "BLIS_NUM_THREADS", "OMP_NUM_THREADS")}
    if preload:
        env["LD_PRELOAD"] = preload
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@needs_openblas
@pytest.mark.parametrize("preload", [False, True])
def test_a_tuned_blas_counts_only_when_mlx_calls_it(preload):
    """NumPy's own OpenBLAS (loaded privately, other symbol names) once made the check say yes without the preload."""
    code = "import numpy, core.runtime as r; print(r.fast_blas_active())"
    assert _child(code, probe.OPENBLAS if preload else None) == str(preload)


@needs_blis
def test_blis_gets_the_usable_cores_unless_the_environment_chose():
    code = ("import core.runtime as r; from core.blas import loaded as b; r.configure_process(); t = b.threads()\n"
            "with r.blas_threads(1): inner = b.threads()\n"
            "print(b.library(), t == r.usable_cpus(), inner, b.threads() == t, r.fast_blas_active())")
    assert _child(code, probe.BLIS) == "BLIS True 1 True True"
    chosen = "from core.blas import loaded as b; import core.runtime as r; r.configure_process(); print(b.threads())"
    assert _child(chosen, probe.BLIS, BLIS_NUM_THREADS="1") == "1"
