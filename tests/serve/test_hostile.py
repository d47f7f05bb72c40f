"""The server against a hostile or sloppy client (issue classes of the hardening work): OpenAI's null-means-default
and refusals by name, exact text (leading spaces, characters cut by max_tokens, offsets), bounded work for large
JSON schemas, slow and idle connections, long prompts from lm-evaluation-harness, descriptor exhaustion and a
graceful SIGTERM. Each test fails on a server without the corresponding guard."""
import json
import os
import signal
import socket
import time

import httpx
import pytest

from conftest import api_server, needs_mirror, start_server

pytestmark = needs_mirror
KEY = "hostile-key"
LM = "smollm2-135m-instruct@fp"
IMG = "resnet20@q8"
TIMEOUTS = ["--header-timeout", "2", "--body-timeout", "2"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(["--api-key", KEY, "--models", f"{LM},{IMG}", *TIMEOUTS],
                    tmp_path_factory.mktemp("hostile")) as url:
        yield url


def post(url, path, body, headers=None, **kwargs):
    """JSON as OpenAI's clients send it (ASCII escapes, so a lone surrogate travels as one)."""
    return httpx.post(f"{url}{path}", content=json.dumps(body), timeout=kwargs.pop("timeout", 120), **kwargs,
                      headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json",
                               **(headers or {})})


def chat(content, **extra):
    return {"model": LM, "messages": [{"role": "user", "content": content}], **extra}


def test_null_means_the_default_as_in_openais_api(server):
    nulls = dict.fromkeys(["temperature", "top_p", "stream", "logprobs", "n", "presence_penalty",
                           "frequency_penalty", "stop", "seed", "stream_options", "top_logprobs"])
    r = post(server, "/v1/chat/completions", chat("Say hi.", max_tokens=4, **nulls))
    assert r.status_code == 200, r.text
    r = post(server, "/v1/completions", {"model": LM, "prompt": "Hi", "max_tokens": 2, "echo": None,
                                         "logprobs": None, "temperature": None})
    assert r.status_code == 200, r.text
    r = post(server, "/v1/chat/completions", {"model": None, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]  # a required field stays required


@pytest.mark.parametrize("body,fragment", [
    (chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]), "'image_url'"),
    (chat([{"type": "input_audio", "input_audio": {}}]), "'input_audio'"),
    (chat("hi", stream_options={"include_usage": True}), "stream_options is only allowed with stream"),
    (chat("hi \ud800 there"), "lone surrogate"),
])
def test_unsupported_parts_and_fields_are_refused_by_name(server, body, fragment):
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]["message"]


def test_a_lone_surrogate_in_a_completions_prompt_is_a_400_not_a_500(server):
    raw = '{"model": "%s", "prompt": "abc \\ud800 def", "max_tokens": 2}' % LM
    r = httpx.post(f"{server}/v1/completions", content=raw, timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert r.status_code == 400 and "surrogate" in r.json()["error"]["message"]


def test_json_without_a_json_content_type_and_a_lowercase_bearer_are_understood(server):
    raw = json.dumps(chat("Say hi.", max_tokens=2))
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = httpx.post(f"{server}/v1/chat/completions", content=raw, timeout=60,
                       headers={"Authorization": f"bearer {KEY}", "content-type": content_type})
        assert r.status_code == 200, r.text
    r = httpx.post(f"{server}/v1/chat/completions", content=b"not json", timeout=60,
                   headers={"Authorization": f"Bearer {KEY}", "content-type": "text/plain"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_completion_text_keeps_the_leading_space_and_offsets_match_it(server):
    body = {"model": LM, "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 1}
    choice = post(server, "/v1/completions", body).json()["choices"][0]
    text, lp = choice["text"], choice["logprobs"]
    assert text.startswith(" ") and text == "".join(lp["tokens"])  # whole-character tokens: they spell the text
    assert [text[o:o + len(t)] for o, t in zip(lp["text_offset"], lp["tokens"])] == lp["tokens"]
    echoed = post(server, "/v1/completions", {**body, "echo": True}).json()["choices"][0]
    assert echoed["text"] == "The capital of France is" + text
    offsets, tokens = echoed["logprobs"]["text_offset"], echoed["logprobs"]["tokens"]
    assert offsets[0] == 0 and [echoed["text"][o:o + len(t)] for o, t in zip(offsets, tokens)] == tokens


PROMPTS = ["Write one word in Japanese.", "Reply with three emoji.", "Translate 'cat' into Chinese.",
           "Write the Greek alphabet.", "Say 'café crème' twice.", "Name a city in Korea, in Korean."]


@pytest.mark.parametrize("max_tokens", [1, 3, 7])
def test_streamed_text_is_the_decoding_of_the_generated_bytes_never_a_broken_character(server, max_tokens):
    for prompt in PROMPTS:
        body = chat(prompt, max_tokens=max_tokens, temperature=0, logprobs=True)
        whole = post(server, "/v1/chat/completions", body).json()["choices"][0]
        generated = b"".join(bytes(e["bytes"]) for e in whole["logprobs"]["content"])
        assert whole["message"]["content"] == generated.decode("utf-8", "replace"), prompt
        pieces = []
        with httpx.stream("POST", f"{server}/v1/chat/completions", json={**body, "stream": True}, timeout=120,
                          headers={"Authorization": f"Bearer {KEY}"}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    delta = json.loads(line[6:])["choices"][0]["delta"]
                    pieces.append(delta.get("content") or "")
        assert "".join(pieces) == whole["message"]["content"], prompt
        texts = [p for p in pieces if p]
        assert not any(p.endswith("\ufffd") for p in texts[:-1]), prompt  # only the cut end may be broken


def test_lm_evaluation_harness_default_length_prompts_are_scored(server):
    tokens = [(i * 7919) % 40000 + 100 for i in range(2000)]  # lm-eval's max_length is 2,048 tokens
    r = post(server, "/v1/completions", {"model": LM, "prompt": tokens, "max_tokens": 0, "echo": True,
                                         "logprobs": 0, "temperature": 0})
    assert r.status_code == 200, r.text
    scored = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert len(scored) == 2000 and scored[0] is None and all(v <= 0 for v in scored[1:])
    r = post(server, "/v1/completions", {"model": LM, "prompt": tokens * 5, "max_tokens": 1})
    assert r.status_code == 400 and "limit" in r.json()["error"]["message"]


def test_a_huge_json_schema_is_refused_at_once_and_the_server_stays_small(server):
    import psutil

    pid = server_pid(server)
    schema = {"type": "object", "properties": {"x": {"type": "string", "maxLength": 100000}}, "required": ["x"]}
    started = time.perf_counter()
    r = post(server, "/v1/chat/completions", chat("Fill it.", max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "big", "schema": schema}}))
    assert r.status_code == 400 and "too large" in r.json()["error"]["message"], r.text
    assert time.perf_counter() - started < 10
    small = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    r = post(server, "/v1/chat/completions", chat("Is water wet? Answer in JSON.", max_tokens=12, temperature=0,
                                                   response_format={"type": "json_schema", "json_schema": {
                                                       "name": "yes", "schema": small}}))
    assert r.status_code == 200 and json.loads(r.json()["choices"][0]["message"]["content"])["ok"] in (True, False)
    assert psutil.Process(pid).memory_info().rss < 4 * 1024**3


def server_pid(url: str) -> int:
    import psutil

    port = int(url.rsplit(":", 1)[1])
    return next(c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid)


def test_six_concurrent_40_megapixel_images_stay_within_the_pixel_budget(server):
    """Each decodes to about 120 MB of RGB and more in between: six at once would take gigabytes."""
    import io
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import psutil
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((6000, 6600, 3), 90, np.uint8)).save(buffer, "PNG")  # 39.6 megapixels, small file
    process, peak, done = psutil.Process(server_pid(server)), [0], threading.Event()
    before = process.memory_info().rss

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    def classify(_):
        return httpx.post(f"{server}/v1/classify", headers={"Authorization": f"Bearer {KEY}"},
                          data={"model": IMG}, files={"file": ("big.png", buffer.getvalue(), "image/png")},
                          timeout=180).status_code

    watcher = threading.Thread(target=watch)
    watcher.start()
    with ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(classify, range(6)))
    done.set()
    watcher.join()
    assert all(c in (200, 429) for c in codes) and codes.count(200) >= 2, codes
    print(f"server RSS {before / 1e9:.2f} GB before, peak {peak[0] / 1e9:.2f} GB; answers {codes}")
    assert peak[0] - before < 2.0e9, f"{(peak[0] - before) / 1e9:.2f} GB more while decoding"


def test_a_body_shorter_than_its_content_length_gets_408_not_a_hang(server):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":".encode())
        started = time.perf_counter()
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - started < 6


@pytest.mark.parametrize("trickle", [False, True])
def test_idle_and_slowloris_connections_are_closed(server, trickle):
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        started = time.perf_counter()
        closed = False
        if trickle:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while time.perf_counter() - started < 8:
            if trickle:  # a valid header value a byte at a time, never finished
                try:
                    s.sendall(b"a")
                except OSError:
                    closed = True
                    break
            s.settimeout(0.5)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.perf_counter() - started < 5  # --header-timeout 2


def health_within(url: str, seconds: float) -> bool:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def descriptor_limit(pid: int) -> int:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files limit")


def test_descriptor_exhaustion_and_sigterm(tmp_path):
    """More silent connections than the server has descriptors: new ones fail while they last, the header deadline
    closes them, and /health answers again; then SIGTERM during a long generation ends the process within its
    grace period."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    proc, url, log = start_server(["--models", LM, "--header-timeout", "2", "--shutdown-grace", "1"], tmp_path)
    port = int(url.rsplit(":", 1)[1])
    try:
        wanted = descriptor_limit(proc.pid) + 200
        if hard != resource.RLIM_INFINITY and hard < wanted + 100:
            pytest.skip(f"this process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted + 100, hard))
        held = []
        for _ in range(wanted):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                break
        assert len(held) > descriptor_limit(proc.pid) - 100  # the server really ran out of descriptors
        # the header deadline closes each silent connection the server accepted, the queued ones included, and
        # /health answers again while the clients still hold theirs
        assert health_within(url, 15)
        for s in held:
            s.close()
        never_ending = {"model": LM, "prompt": "1, 2, 3,", "max_tokens": 512, "stream": True,
                        "logit_bias": {"0": -100, "1": -100, "2": -100}}  # no end-of-text: all 512 tokens
        with httpx.stream("POST", f"{url}/v1/completions", timeout=60, json=never_ending) as r:
            lines = r.iter_lines()
            next(lines)  # generating
            proc.send_signal(signal.SIGTERM)
            started = time.perf_counter()
            rest = []
            try:
                rest += lines
            except httpx.RemoteProtocolError:
                pass  # the stream was cut when the grace period ended
        proc.wait(timeout=30)
        assert time.perf_counter() - started < 10
        assert "data: [DONE]" not in rest  # the generation was stopped after the grace period, not waited for
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        if proc.poll() is None:
            proc.kill()
        log.seek(0)
        print(log.read()[-3000:])
