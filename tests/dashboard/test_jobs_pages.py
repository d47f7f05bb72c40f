"""The dashboard's runs are the worker's jobs (AppTest, a real worker process): a second session (a reload, another
tab) sees a run the first one started and can cancel it from the sidebar of any page; a worker killed mid-run
leaves the job interrupted, every cached row whole, and a new Run finishes it; a sweep goes to the hosts of a
hostfile (two ranks on this machine) and its rows come back."""
import json
import os
import signal
import time

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, needs_mirror, wait_for_jobs

pytestmark = needs_mirror
WIDTHS = [8, 6, 5, 4, 3, 2]  # one configuration each: a run of several seconds, each row cached as it finishes


def app() -> AppTest:
    return AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()


def start_run(limit: int = 1000, where: str = "this machine", hostfile: str = "") -> AppTest:
    at = app().switch_page("views/quantize.py").run()
    at.selectbox(key="q_model").set_value("resnet20-mlxq").run()
    at.multiselect(key="q_bits").set_value(WIDTHS)
    at.number_input(key="q_limit").set_value(limit)
    at.checkbox(key="q_bench").uncheck()
    at.radio(key="q_where").set_value(where).run()
    if hostfile:
        at.text_input(key="q_hostfile").input(hostfile)
    at.button(key="q_run").click().run()
    assert not at.exception and not at.error
    return at


def running_job(rows_cached: int = 0, timeout: float = 120):
    """The running job once its worker has cached `rows_cached` rows (fresh results folder per test)."""
    from core.jobs.store import JobStore
    from core.settings import results_dir

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [job for job in JobStore().active() if job.state == "running"]
        if running and len(list(results_dir().glob("*.json"))) >= rows_cached:
            return running[0]
        time.sleep(0.05)
    pytest.fail("the job did not get going")


@pytest.fixture
def fresh_results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLXQ_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def test_another_session_sees_the_run_and_cancels_it_from_any_page(fresh_results):
    first = start_run()
    job = running_job()
    reloaded = app().switch_page("views/quantize.py").run()  # its form starts from the run in progress
    assert reloaded.selectbox(key="q_model").value == "resnet20-mlxq"  # not the default, resnet20
    assert reloaded.multiselect(key="q_bits").value == WIDTHS and reloaded.number_input(key="q_limit").value == 1000
    assert not reloaded.exception and not reloaded.warning
    second = app().switch_page("views/system.py").run()  # a reload, or a second tab: a new session
    bars = [p.proto.text for p in second.sidebar.get("progress")]
    assert any("evaluate resnet20-mlxq" in text for text in bars), bars
    second.sidebar.button(key=f"jobs_cancel_{job.id}").click().run()
    (ended,) = wait_for_jobs(60)
    assert ended.state == "cancelled"
    first.run()
    assert any("The last run was cancelled" in w.value for w in first.warning)


def test_a_killed_worker_leaves_the_run_interrupted_and_a_new_run_finishes_it(fresh_results):
    from core.cache import ResultCache
    from core.jobs.store import JobStore

    at = start_run()
    job = running_job(rows_cached=2)
    os.kill(job.worker["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10  # the signal lands asynchronously
    while JobStore().get(job.id).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert JobStore().get(job.id).state == "interrupted"  # any reader sees the worker is gone
    at.run()
    assert any("interrupted" in w.value for w in at.warning)
    files = sorted(fresh_results.glob("*.json"))
    assert files and all(ResultCache(fresh_results).read(p.stem) is not None for p in files)
    at.button(key="q_run").click().run()  # a new worker; the rows already cached are read back
    assert wait_for_jobs()[0].state == "done"
    at.run()
    table = at.dataframe[0].value
    assert list(table["configuration"]) == ["resnet20-mlxq fp"] + [f"resnet20-mlxq q{b}g64" for b in WIDTHS]


def test_a_sweep_goes_to_the_hosts_of_a_hostfile(fresh_results, tmp_path):
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps([{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2))  # two ranks, this machine
    at = start_run(limit=200, where="the hosts of a hostfile", hostfile=str(hosts))
    (job,) = wait_for_jobs()
    assert job.kind == "sweep" and job.state == "done", job.error
    assert job.result["ranks"] == 2 and job.result["computed"] == len(WIDTHS) + 1
    at.run()
    assert list(at.dataframe[0].value["configuration"])[:2] == ["resnet20-mlxq fp", "resnet20-mlxq q8g64"]


def test_a_bad_hostfile_is_refused_before_anything_runs(tmp_path):
    (tmp_path / "hosts.json").write_text("not json")
    at = app().switch_page("views/quantize.py").run()
    at.radio(key="q_where").set_value("the hosts of a hostfile").run()
    at.text_input(key="q_hostfile").input(str(tmp_path / "hosts.json"))
    at.button(key="q_run").click().run()
    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert "is not JSON" in message and "mlx.distributed_config" in message


def test_a_cancel_is_acknowledged_at_once_in_every_session(fresh_results, tmp_path, monkeypatch):
    """Cancel stops a run at its next step, which may be many seconds away: every session says so at once (the
    marker is on disk) and the Cancel buttons go grey. This process plays the worker: no step is ever taken."""
    from core.jobs import process
    from core.jobs.store import JobStore

    monkeypatch.setenv("MLXQ_JOBS", str(tmp_path / "jobs"))
    store = JobStore()
    job = store.submit("eval", {"configs": [{"model": "resnet20-mlxq", "bits": 4, "limit": 100}]})
    assert store.claim_next(process.identity()).id == job.id  # running, held by a live process
    first, second = app(), app().switch_page("views/system.py").run()
    second.sidebar.button(key=f"jobs_cancel_{job.id}").click().run()
    for session in (second, first.run()):
        bars = [p.proto.text for p in session.sidebar.get("progress")]
        assert any(text.endswith("cancelling after the current step") for text in bars), bars
        assert session.sidebar.button(key=f"jobs_cancel_{job.id}").disabled
    assert store.get(job.id).state == "running" and store.cancel_requested(job.id)
