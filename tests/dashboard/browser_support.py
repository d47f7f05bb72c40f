"""What the browser tests share: the Streamlit server they drive, Chromium's settings, and the checks every flow
ends with (screenshot, no exception or traceback, nothing wider than the page)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path

from conftest import REPO, stop_worker

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - depends on the machine
    expect = None

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"

# The network is closed: without the background-networking flags Chromium floods refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_S = 60
PAGE_S = 60            # a page and its widgets
RUN_S = 180            # the quantize run
CHAT_S = 180           # loading SmolLM2 twice (fp32 and 4-bit) and generating
EXCEPTION = '[data-testid="stException"]'
ERROR = '[data-testid="stAlertContentError"]'
TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
WIDTH = 1280           # a classroom projector's width: every page must fit it


class Server:
    """`streamlit run app.py` on a free port; its output goes to a log file the flows check for tracebacks. Its
    runs go to a job worker of their own (records under `results`' folder), stopped with the server."""

    def __init__(self, results: Path, log: Path, env: dict | None = None):
        self.jobs = results.parent / "jobs"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.port", str(self.port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=REPO, env={**(env or os.environ), "MLXQ_RESULTS": str(results),
                           "MLXQ_SENSITIVITY": str(results.parent / "sensitivity"),
                           "MLXQ_JOBS": str(self.jobs)}, stdout=self._log_file,
            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {self.process.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"streamlit was not healthy after {timeout:.0f} s:\n{self.output()}")

    def output(self, start: int = 0) -> str:
        self._log_file.flush()
        return self.log.read_bytes()[start:].decode(errors="replace")

    def stop(self) -> None:
        """Its whole process group (it was started in a new session), politely, then not."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
        stop_worker(self.jobs)  # a process of its own session: the server's group does not include it
        self._log_file.close()


@contextmanager
def running_server(folder: Path, env: dict | None = None):
    srv = Server(results=folder / "results", log=folder / "streamlit.log", env=env)
    try:
        srv.wait_healthy(SERVER_START_S)
        yield srv
    finally:
        srv.stop()


def screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to its height first."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("""() => Math.max(document.documentElement.scrollHeight, ...Array.from(
        document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"]'),
        e => e.scrollHeight))""")
    try:
        if height > size["height"]:
            page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 8000)})
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    finally:
        page.set_viewport_size(size)


@contextmanager
def flow(page, server: Server, name: str, errors_expected: bool = False):
    """Screenshot at the end (also on failure), then: no exception element, no traceback on the page or in the
    server's log, and no error message unless the flow provokes one."""
    log_start = len(server.log.read_bytes())
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the page as it was when the flow failed; never hide the failure itself
            screenshot(page, name)
        raise
    screenshot(page, name)
    expect(page.locator(EXCEPTION)).to_have_count(0)
    assert_fits_the_width(page)
    assert not TRACEBACK.search(page.locator("body").inner_text()), "a Python traceback is shown on the page"
    log = server.output(log_start)
    assert not TRACEBACK.search(log), f"the server logged a traceback:\n{log[-8000:]}"
    if not errors_expected:
        errors = page.locator(ERROR).all_inner_texts()
        assert not errors, f"error messages on the page: {errors}"


def assert_fits_the_width(page) -> None:
    """Nothing is cut off at the viewport's width: the main area does not scroll sideways and no table or chart
    reaches past its right edge."""
    overflow = page.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        const wide = Array.from(document.querySelectorAll(
            '[data-testid="stDataFrame"], [data-testid="stTable"], [data-testid="stPlotlyChart"]'))
            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
            .map(e => e.getAttribute('data-testid'));
        return {main: main ? main.scrollWidth - main.clientWidth : 0, wide};
    }""")
    assert overflow["main"] <= 1 and not overflow["wide"], f"wider than {WIDTH} px: {overflow}"


def open_page(page, server: Server, path: str, ready) -> None:
    page.goto(server.url + path)
    expect(ready(page)).to_be_visible(timeout=PAGE_S * 1000)


