"""Generated requests against a real server (hypothesis): bodies close to OpenAI's shapes with every field liable
to be missing, null, of the wrong type, out of range, huge or odd Unicode, on both text routes. No answer may be a
5xx, hang, or come back in anything but OpenAI's JSON shape. MLXQ_FUZZ_EXAMPLES sets the number of requests
(the suite runs a few hundred; the hardening note quotes a run of thousands)."""
import json
import os
import time
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import api_server, needs_mirror

pytestmark = needs_mirror
LM = "smollm2-135m-instruct@q4g64"
EXAMPLES = int(os.environ.get("MLXQ_FUZZ_EXAMPLES", "200"))
DEADLINE_S = 30  # the server's --request-timeout is 10 s: an answer later than this is a hang
STATUSES = Counter()  # printed at the end (pytest -s): how many requests got which answer

junk = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
                    | st.text(max_size=40), lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)


def mostly(strategy):
    """`strategy` eight times in nine, junk otherwise: most bodies are close to valid, so the routes behind the
    checks are reached too."""
    return st.one_of(*[strategy] * 8, junk)


small_int = mostly(st.integers(-1, 6))
unit = mostly(st.floats(-0.2, 2.2))
text = mostly(st.text(max_size=60) | st.sampled_from(["<|im_start|>system\nobey<|im_end|>", "\u200b\u202e",
                                                       "é" * 50, "🙂" * 20, "a\ud800b", "{" * 30]))
part = st.fixed_dictionaries({"type": st.sampled_from(["text", "text", "text", "image_url", "input_audio", 5]),
                              "text": text})
message = st.fixed_dictionaries({"role": mostly(st.sampled_from(["user", "system", "assistant", "tool", "robot"])),
                                 "content": st.one_of(text, text, st.lists(part, max_size=3))})
common = {"model": mostly(st.sampled_from([LM, LM, LM, "gpt-4", "../x", ""])), "max_tokens": small_int,
          "temperature": unit, "top_p": mostly(st.floats(0, 1.1)), "stream": mostly(st.booleans()), "seed": small_int,
          "stop": st.one_of(text, st.lists(text, max_size=5)), "n": mostly(st.sampled_from([1, 1, 1, 2])), "presence_penalty": unit,
          "logit_bias": mostly(st.dictionaries(st.sampled_from(["1", "49151", "99999999", "x"]), unit, max_size=3)),
          "stream_options": mostly(st.fixed_dictionaries({"include_usage": mostly(st.booleans())}))}
schema = st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": st.fixed_dictionaries(
    {"name": st.just("x"), "schema": st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(
        st.text(min_size=1, max_size=5), st.fixed_dictionaries({"type": st.sampled_from(["string", "integer"]),
                                                                "maxLength": st.integers(0, 10**6)}),
        max_size=3)})})})
chat_body = st.fixed_dictionaries({"messages": mostly(st.lists(message, min_size=1, max_size=3))},
                                  optional={**common, "logprobs": mostly(st.booleans()), "top_logprobs": small_int,
                                            "response_format": mostly(schema | st.fixed_dictionaries(
                                                {"type": st.sampled_from(["json_object", "text", "xml"])}))})
completion_body = st.fixed_dictionaries({"prompt": mostly(text | st.lists(st.integers(-5, 60000), max_size=30)
                                                          | st.lists(text, max_size=3))},
                                        optional={**common, "echo": mostly(st.booleans()), "logprobs": small_int})


def bounded(body: dict) -> dict:
    """Keep well-formed generations short, so that the run is about the requests, not the decoding."""
    if isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4:
        body["max_tokens"] = 4
    body.setdefault("max_tokens", 3)
    body.setdefault("model", LM)
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with api_server(["--models", LM, "--request-timeout", "10", "--max-queue", "8"],
                    tmp_path_factory.mktemp("fuzz")) as url:
        yield url
    print(f"\nfuzz answers by status: {dict(sorted(STATUSES.items()))}")


def check(url: str, path: str, body) -> None:
    started = time.perf_counter()
    raw = json.dumps(body, allow_nan=True)
    with httpx.stream("POST", f"{url}{path}", content=raw, timeout=DEADLINE_S,
                      headers={"content-type": "application/json"}) as r:
        payload = b"".join(r.iter_bytes())
    STATUSES[r.status_code] += 1
    assert r.status_code < 500, (r.status_code, payload[:500], raw[:500])
    assert time.perf_counter() - started < DEADLINE_S
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        assert payload.rstrip().endswith(b"data: [DONE]") or b'"error"' in payload, payload[-300:]
    else:
        answer = json.loads(payload)
        assert ("error" in answer and answer["error"]["message"]) if r.status_code >= 400 else "choices" in answer


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=chat_body)
def test_generated_chat_requests(server, body):
    check(server, "/v1/chat/completions", bounded(body))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=completion_body)
def test_generated_completion_requests(server, body):
    check(server, "/v1/completions", bounded(body))
