"""Shared test set-up: the data mirror (../shared unless MLXQ_MIRROR says otherwise), the process set-up every command
makes, and a private result cache."""
import importlib.util
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if not os.environ.get("MLXQ_MIRROR") and (REPO.parent / "shared" / "data").is_dir():
    os.environ["MLXQ_MIRROR"] = str(REPO.parent / "shared")


def pytest_configure(config):
    """What `python -m core` and the dashboard set up before they compute (core.runtime.configure_process: the
    allocator, MLXQ_DEVICE, BLIS's threads; importing core sets up nothing), before any test module is collected.
    Without MLX only tests/test_layout.py can run, and it needs none of it."""
    if importlib.util.find_spec("mlx") is not None:
        from core import runtime

        runtime.configure_process()


def mirror() -> Path | None:
    root = os.environ.get("MLXQ_MIRROR")
    return Path(root) if root and (Path(root) / "data").is_dir() else None


needs_mirror = pytest.mark.skipif(mirror() is None, reason="no data mirror: set MLXQ_MIRROR (CI has ../shared)")


@pytest.fixture(autouse=True)
def private_results(tmp_path_factory, monkeypatch):
    """Result rows go to a per-session temporary folder, never into the user's cache/results."""
    monkeypatch.setenv("MLXQ_RESULTS", str(tmp_path_factory.getbasetemp() / "results"))


@pytest.fixture(autouse=True)
def private_jobs(tmp_path, monkeypatch):
    """Job records in the test's own folder; a worker a page or command started there (it inherits the test's
    environment) is stopped at the end of the test."""
    folder = tmp_path / "jobs"
    monkeypatch.setenv("MLXQ_JOBS", str(folder))
    yield folder
    stop_worker(folder)


def stop_worker(folder: Path) -> None:
    """Terminate the job worker the heartbeat in `folder` names, if it is alive, and wait until it is gone."""
    import psutil

    from core.jobs.process import alive
    from core.jobs.store import JobStore
    from core.jobs.worker import read_heartbeat

    beat = read_heartbeat(JobStore(folder))
    if alive(beat):
        worker = psutil.Process(beat["pid"])
        worker.terminate()
        worker.wait(timeout=30)


def wait_for_jobs(timeout: float = 300) -> list:
    """Until no job in this session's folder is queued or running; the jobs, newest first."""
    from core.jobs.store import JobStore

    deadline = time.monotonic() + timeout
    while (active := JobStore().active()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not active, f"jobs still running after {timeout} s: {active}"
    return JobStore().jobs()


@pytest.fixture(scope="session")
def smollm2_dir():
    from core.models.gguf import prepare_smollm2
    from core.settings import cache_root

    return prepare_smollm2(cache_root())


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(model, tokenizer) straight from mlx-lm; shared by tests, so never mutate it."""
    import mlx_lm

    return mlx_lm.load(str(smollm2_dir))


def free_port() -> int:
    from core.dist.launch import free_ports

    return free_ports(1)


def start_server(args: list[str], folder: Path, env: dict | None = None):
    """`python -m core serve ARGS` on a free loopback port, once /health answers: (process, URL, its log file).
    Fails the test, with the log, if it does not come up; stopping it is the caller's."""
    import httpx

    port = free_port()
    log = open(folder / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "core", "serve", "--port", str(port), *args], cwd=REPO,
                            stdout=log, stderr=log, env=env)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    log.seek(0)
    pytest.fail(f"server did not start: {log.read()}")


@contextmanager
def api_server(args: list[str], folder: Path, env: dict | None = None):
    """`python -m core serve ARGS` on a free loopback port; yields its URL, fails the test if it dies."""
    proc, url, log = start_server(args, folder, env)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.returncode in (0, -15), "the server died"


def without_mirror() -> dict:
    """The environment of a bare clone: no data mirror, and the hub unreachable (it is here anyway)."""
    env = {k: v for k, v in os.environ.items() if k != "MLXQ_MIRROR"}
    return {**env, "MLXQ_MIRROR": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def write_export(q, out: Path, force: bool = False):
    """An already quantized model (core.quant.recipe.Quantized) written as `python -m core export` writes it
    (core.deploy.export.export_model less the quantizing: a test reuses one model for several folders, or builds
    one by hand); it is cast to its config's compute dtype in place first."""
    from core.deploy import export

    out = Path(os.path.abspath(out))
    export.check_destination(out, force)
    with export._staging_folder(out) as staging:
        return export._finish(q, staging, out)


def truncated_smollm2(blocks: int):
    """SmolLM2's real weights, first `blocks` transformer blocks only: a smaller real LLaMA for fast tests."""
    from core.models.registry import resolve
    from core.quant.baseline import load_baseline
    model, tokenizer = load_baseline(resolve("smollm2-135m-instruct"))
    model.model.layers = model.model.layers[:blocks]
    return model, tokenizer


def mean_kl(reference, logits) -> float:
    """Mean KL(reference ‖ logits) per position, both given as logits."""
    import mlx.core as mx
    log_p = reference - mx.logsumexp(reference, axis=-1, keepdims=True)
    log_q = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    return float((mx.exp(log_p) * (log_p - log_q)).sum(-1).mean())


def smollm2_folder(blocks: int, out: Path) -> Path:
    """SmolLM2's first `blocks` blocks written as an mlx-lm folder (float32, its tokenizer): a real model that the
    lab reads piece by piece from disk, as it reads a user's own."""
    import json
    import shutil

    from mlx_lm.utils import save_model

    from core.models.gguf import prepare_smollm2
    from core.settings import cache_root

    source = prepare_smollm2(cache_root())
    model, _ = truncated_smollm2(blocks)
    out.mkdir(parents=True, exist_ok=True)
    save_model(out, model)
    config = json.loads((source / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_hidden_layers": blocks}))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(source / name, out / name)
    return out


@pytest.fixture(scope="session")
def smollm2_2blocks(tmp_path_factory):
    return smollm2_folder(2, tmp_path_factory.mktemp("smollm2-2blocks"))
