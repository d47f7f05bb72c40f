"""A bounded load test of a running server on loopback: N concurrent clients, a fixed number of requests,
a mix of image classifications and short chat completions. Reports latency percentiles, tokens/s and RSS."""
from __future__ import annotations

import io
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import httpx
import numpy as np
from PIL import Image

from core.errors import LabError


@dataclass
class LoadReport:
    requests: int
    errors: int
    clients: int
    wall_s: float
    latency_ms_p50: float
    latency_ms_p95: float
    chat_latency_ms_p50: float
    chat_latency_ms_p95: float
    classify_latency_ms_p50: float
    classify_latency_ms_p95: float
    completion_tokens: int
    tokens_per_s: float
    requests_per_s: float
    rss_before_bytes: int
    rss_after_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def _rss(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    return int(re.search(r"^mlxq_process_resident_memory_bytes (\d+)", text, re.M).group(1))


def run_load(base_url: str, chat_model: str, image_model: str, clients: int = 16, requests: int = 256,
             chat_every: int = 4, max_tokens: int = 8, api_key: str | None = None, timeout_s: float = 600) -> LoadReport:
    """Every `chat_every`-th request is a chat completion, the rest classify a small PNG. Bounded in count and time,
    and only against this machine: a load test is never pointed at someone else's server."""
    host = httpx.URL(base_url).host
    if host not in ("localhost", "::1") and not host.startswith("127."):
        raise LabError(f"Load tests only target this machine (127.0.0.1, localhost, ::1), not {host!r}.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(png, "PNG")
    image = png.getvalue()
    deadline = time.monotonic() + timeout_s
    lock = threading.Lock()
    samples: list[tuple[str, float, bool, int]] = []

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        kind = "chat" if i % chat_every == 0 else "classify"
        start = time.perf_counter()
        ok, tokens = False, 0
        try:
            with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
                if kind == "chat":
                    r = client.post("/v1/chat/completions", json={
                        "model": chat_model, "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Say a number between {i} and {i + 10}."}]})
                    ok = r.status_code == 200
                    tokens = r.json()["usage"]["completion_tokens"] if ok else 0
                else:
                    r = client.post("/v1/classify", data={"model": image_model},
                                    files={"file": ("x.png", image, "image/png")})
                    ok = r.status_code == 200 and len(r.json()["predictions"]) == 5
        except httpx.HTTPError:
            ok = False
        with lock:
            samples.append((kind, (time.perf_counter() - start) * 1e3, ok, tokens))

    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        rss_before = _rss(client)
        wall_start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - wall_start
        rss_after = _rss(client)

    def pct(kind: str | None, q: float) -> float:
        values = [ms for k, ms, _, _ in samples if kind is None or k == kind]
        return float(np.percentile(values, q)) if values else float("nan")

    tokens = sum(t for *_, t in samples)
    return LoadReport(len(samples), sum(not ok for _, _, ok, _ in samples), clients, wall, pct(None, 50), pct(None, 95),
                      pct("chat", 50), pct("chat", 95), pct("classify", 50), pct("classify", 95), tokens,
                      tokens / wall, len(samples) / wall, rss_before, rss_after)
