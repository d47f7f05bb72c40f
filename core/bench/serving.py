"""The `serving` bench section: this project's server against mlx_lm.server on the same quantized model, same
machine, same run. Both servers run as their own processes on loopback; the clients here stream chat answers
(aggregate tokens/s, time to first token, inter-token latency at each concurrency) and classify images (idle and
while four clients stream). The server is reached only over HTTP, so this module depends on no server code."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.dist.launch import free_ports
from core.errors import LabError

PROMPTS = ("Tell me about the sea.", "Describe a city at night.", "Explain how bread is made.",
           "Write about a long journey.", "What makes a good teacher?", "Describe your favourite season.",
           "Tell a story about a dragon.", "How do birds fly?")


@dataclass
class StreamStats:
    tokens: int
    first_token_s: float
    gaps_s: list[float]  # between consecutive content chunks


@dataclass
class Round:
    clients: int
    tokens: int
    wall_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_p95_ms: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s


@contextmanager
def running_server(command: list[str], log: Path, ready_path: str = "/health", timeout_s: float = 300):
    """A server process on a free loopback port until the block ends; yields its URL."""
    import httpx

    port = free_ports(1)
    with open(log, "w") as out:
        proc = subprocess.Popen([*command, "--port", str(port)], stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise LabError(f"{' '.join(command)} exited at start-up; its log ends: {_tail(log)}")
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            raise LabError(f"{' '.join(command)} did not answer within {timeout_s:.0f} s; its log ends: {_tail(log)}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _tail(log: Path, lines: int = 8) -> str:
    """The last lines of a server's log, for an error that outlives the temporary folder the log is in."""
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def stream_one(url: str, model: str, prompt: str, max_tokens: int) -> StreamStats:
    """One streamed chat answer, greedy, timed from the request to each content chunk."""
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start, stamps, usage = time.perf_counter(), [], None
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            raise LabError(f"{url} answered {r.status_code}: {r.read()[:200]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                stamps.append(time.perf_counter())
    if not stamps:
        raise LabError(f"{url} streamed no text for {prompt!r}.")
    return StreamStats(usage or len(stamps), stamps[0] - start, list(np.diff(stamps)))


def concurrent_round(url: str, model: str, clients: int, max_tokens: int) -> Round:
    prompts = [PROMPTS[i % len(PROMPTS)] + ("" if i < len(PROMPTS) else f" ({i})") for i in range(clients)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: stream_one(url, model, p, max_tokens), prompts))
    wall = time.perf_counter() - start
    ttft = [r.first_token_s * 1e3 for r in results]
    gaps = [g * 1e3 for r in results for g in r.gaps_s] or [float("nan")]
    return Round(clients, sum(r.tokens for r in results), wall, *np.percentile(ttft, [50, 95]),
                 *np.percentile(gaps, [50, 95]))


def alternating_rounds(contenders, clients: int, max_tokens: int, trials: int) -> dict[str, list[Round]]:
    """`trials` rounds of each (name, url, model) contender, taking turns and going first in alternate trials,
    so that drift in the machine's speed during the run (other tenants, heat) falls on both alike."""
    rounds: dict[str, list[Round]] = {name: [] for name, _, _ in contenders}
    for trial in range(trials):
        for name, url, model in (contenders if trial % 2 == 0 else contenders[::-1]):
            rounds[name].append(concurrent_round(url, model, clients, max_tokens))
    return rounds


def median_round(rounds: list[Round]) -> Round:
    return sorted(rounds, key=lambda r: r.tokens_per_s)[len(rounds) // 2]


def _png(seed: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def classify_latencies(url: str, model: str, n: int) -> list[float]:
    """Milliseconds of `n` sequential /v1/classify requests (one connection each, as separate clients send)."""
    import httpx

    image, out = _png(0), []
    for _ in range(n):
        start = time.perf_counter()
        r = httpx.post(f"{url}/v1/classify", data={"model": model}, files={"file": ("a.png", image, "image/png")},
                       timeout=120)
        if r.status_code != 200:
            raise LabError(f"classify answered {r.status_code}: {r.text[:200]}")
        out.append((time.perf_counter() - start) * 1e3)
    return out


def classify_under_load(url: str, lm: str, image_model: str, n: int, streams: int = 4,
                        max_tokens: int = 64) -> list[float]:
    """Classify latencies measured while `streams` clients stream `max_tokens`-token answers."""
    with ThreadPoolExecutor(streams) as pool:
        running = [pool.submit(stream_one, url, lm, PROMPTS[i], max_tokens) for i in range(streams)]
        time.sleep(1.0)  # the streams are decoding
        latencies = []
        while len(latencies) < n and not all(f.done() for f in running):
            latencies += classify_latencies(url, image_model, 1)
        for f in running:
            f.result()
    return latencies


def export_for_peer(model_id: str, folder: Path) -> Path:
    """The model the lab serves as `model_id`, written as an mlx-lm folder with the same quantization."""
    from core.deploy.export import export_model
    from core.deploy.ids import parse_model_id
    from core.quant.config import QuantConfig

    info, spec = parse_model_id(model_id)
    config = QuantConfig(info.name, bits=spec.bits, group_size=spec.group_size, mode=spec.mode,
                         quantizer=spec.quantizer)
    export_model(config, folder, force=True)
    return folder


LM_ROUNDS = (("smollm2-135m-instruct@q4g64", (1, 4, 16)), ("smollm2-135m-instruct@fp", (1, 16)))
GPU_LM_ROUNDS = (("smollm2-135m-instruct@q4g64", (1, 16, 64)), ("smollm2-135m-instruct@fp", (1, 16, 64)))


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


def serving_speed(lm_rounds=LM_ROUNDS, image_model: str | None = None, max_tokens: int = 64,
                  classify_n: int = 40, bandwidth: float | None = None, trials_per_round: int = 3) -> list[tuple]:
    """Bench rows (section, subject, variant, value, unit, note): for each model and concurrency, tokens/s (the
    median of `trials_per_round`), TTFT and ITL of both servers (mlx_lm.server on the lab's export of that model),
    next to the memory-bandwidth ceiling when `bandwidth` (bytes/s) is known; classify idle and while four
    clients stream.
    Both servers may decode as many sequences together as the most clients of any round."""
    from core.models.registry import default_vision_model

    image_model = image_model or f"{default_vision_model()}@q8"
    rows: list[tuple] = []
    served = ",".join([*(m for m, _ in lm_rounds), image_model])
    slots = str(max(c for _, rounds in lm_rounds for c in rounds))
    ours_cmd = [sys.executable, "-m", "core", "serve", "--models", served, "--max-batch", slots]
    with tempfile.TemporaryDirectory(prefix="mlxq-serving-") as tmp, \
            running_server(ours_cmd, Path(tmp) / "ours.log") as ours:
        for model_id, concurrency in lm_rounds:
            folder = export_for_peer(model_id, Path(tmp) / model_id.replace("@", "-"))
            peer_cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--log-level", "WARNING",
                        "--decode-concurrency", slots]
            with running_server(peer_cmd, Path(tmp) / "peer.log", ready_path="/v1/models") as peer:
                for url, model in ((ours, model_id), (peer, "default_model")):
                    stream_one(url, model, PROMPTS[0], 8)  # warm-up: loads, kernels
                speeds = {}
                contenders = (("mlx_lm.server", peer, "default_model"), ("project", ours, model_id))
                for clients in concurrency:
                    for name, trials in alternating_rounds(contenders, clients, max_tokens, trials_per_round).items():
                        r = median_round(trials)
                        speeds[name, clients] = r.tokens_per_s
                        spread = f"{min(t.tokens_per_s for t in trials):.3g}-{max(t.tokens_per_s for t in trials):.3g}"
                        rows.append(("serving", f"{model_id} {clients} streams", name, r.tokens_per_s, "tokens/s",
                                     f"median of {len(trials)} trials (range {spread} tokens/s; the servers take "
                                     f"turns, first in alternate trials); in that trial TTFT p50 "
                                     f"{r.ttft_p50_ms:.0f} / p95 {r.ttft_p95_ms:.0f} ms, ITL p50 {r.itl_p50_ms:.1f} "
                                     f"/ p95 {r.itl_p95_ms:.1f} ms, {r.tokens} tokens in {r.wall_s:.1f} s; greedy, "
                                     f"{max_tokens} max"))
                    rows.append(("serving", f"{model_id} {clients} streams", "project / mlx_lm.server",
                                 speeds["project", clients] / speeds["mlx_lm.server", clients], "x", "aggregate tokens/s"))
                    if bandwidth:
                        size = weights_bytes(folder)
                        rows.append(("serving", f"{model_id} {clients} streams", "memory-bandwidth ceiling",
                                     clients * bandwidth / size, "tokens/s",
                                     f"{clients} x {bandwidth / 1e12:.1f} TB/s / {size / 1e6:,.0f} MB of weights "
                                     "(one read of the weights per step; KV-cache reads left out)"))
                most = max(concurrency)
                rows.append(("serving", f"{model_id} {most} streams / 1 stream", "project",
                             speeds["project", most] / speeds["project", min(concurrency)], "x",
                             "aggregate tokens/s at the most clients over one client"))
        lm = lm_rounds[0][0]
        classify_latencies(ours, image_model, 5)  # warm-up
        idle = classify_latencies(ours, image_model, classify_n)
        loaded = classify_under_load(ours, lm, image_model, classify_n)
    for label, values in (("idle", idle), (f"while 4 clients stream 64 tokens of {lm}", loaded)):
        p50, p95 = np.percentile(values, [50, 95])
        rows.append(("serving", f"{image_model} classify {label}", "project", p95, "ms p95",
                     f"p50 {p50:.1f} ms, {len(values)} requests, one connection each"))
    return rows
