"""The System page watches the process that runs the jobs: the worker publishes its own memory (RSS and MLX's
counters, which only it can read) with the job it runs, and the page shows them beside the dashboard's."""
import time

from conftest import REPO, stop_worker
from core.jobs.store import JobStore
from core.jobs.worker import ensure_worker
from core.report.status import WORKER_READINGS, worker_readings
from jobsupport import jobs_dir, long_eval_spec, wait_for  # noqa: F401  (fixture)


def test_the_worker_publishes_its_memory_and_job_and_it_rises_during_a_run(jobs_dir):
    store = JobStore()
    pid = ensure_worker(store)
    idle = wait_for(lambda: (r := worker_readings(jobs_dir)) and r["pid"] == pid and r)
    assert idle["job"] is None and idle["rss_bytes"] > 20e6 and idle["mlx_active_bytes"] == 0
    job = store.submit("eval", long_eval_spec(limit=2000))
    during = []
    while store.get(job.id).state in ("queued", "running"):
        readings = worker_readings(jobs_dir)
        if readings and readings["job"] == job.id:
            during.append(readings)
        time.sleep(0.2)
    assert store.get(job.id).state == "done"
    assert len(during) >= 2, "the readings did not follow the job"
    assert max(r["rss_bytes"] for r in during) > idle["rss_bytes"] + 30e6  # the model and test images loaded
    assert max(r["mlx_peak_bytes"] for r in during) > 0
    stop_worker(jobs_dir)
    assert not (jobs_dir / WORKER_READINGS).exists() and worker_readings(jobs_dir) is None


def test_the_system_page_shows_the_workers_memory_beside_the_dashboards(jobs_dir):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=180).run().switch_page("views/system.py").run()
    time.sleep(1.0)  # the page's monitor samples twice a second
    at.run()
    labels = {m.label for m in at.metric}
    assert not at.exception and "Worker RSS" not in labels
    assert any("No worker is running" in c.value for c in at.caption)
    pid = ensure_worker(JobStore())
    wait_for(lambda: worker_readings(jobs_dir))
    time.sleep(1.0)  # the page's monitor samples twice a second
    at.run()
    values = {m.label: m.value for m in at.metric}
    assert {"Worker RSS", "Worker MLX active", "Worker MLX peak", "Process RSS", "MLX active"} <= set(values)
    assert values["Worker RSS"].endswith("MB") and any(f"Process {pid}, idle" in c.value for c in at.caption)
