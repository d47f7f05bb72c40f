"""The OpenAI wire format (core.serve.openai) as pure functions: no server, no model."""
import json

import pytest

from core.serve import openai
from core.serve.schemas import ChatRequest, CompletionRequest


def chat_request(**extra) -> ChatRequest:
    return ChatRequest(model="m@fp", messages=[{"role": "user", "content": "hi"}], **extra)


def test_sampling_settings_take_the_defaults_and_check_the_limits():
    params = openai.sampling_params(chat_request(), default_max_tokens=128, max_tokens_limit=512)
    assert params == dict(max_tokens=128, temperature=1.0, top_p=1.0, seed=None, stop=[])
    params = openai.sampling_params(chat_request(max_completion_tokens=7, max_tokens=9, stop="END", seed=3), 128, 512)
    assert params["max_tokens"] == 7 and params["stop"] == ["END"] and params["seed"] == 3
    with pytest.raises(openai.ApiError, match="between 1 and 512") as error:
        openai.sampling_params(chat_request(max_tokens=513), 128, 512)
    assert error.value.status == 400 and error.value.param == "max_tokens"
    with pytest.raises(openai.ApiError, match="at most 4"):
        openai.sampling_params(chat_request(stop=["a", "b", "c", "d", "e"]), 128, 512)
    with pytest.raises(openai.ApiError, match="non-empty"):
        openai.sampling_params(chat_request(stop=[""]), 128, 512)


def test_a_chat_completion_whole_and_streamed():
    c = openai.Completion.new("m@fp", chat=True)
    assert c.id.startswith("chatcmpl-") and len(c.id) == len("chatcmpl-") + 24 and c.created > 0
    whole = c.whole("Paris.", "stop", openai.usage(5, 2))
    assert whole["object"] == "chat.completion" and whole["model"] == "m@fp"
    assert whole["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                                 "finish_reason": "stop"}]
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    opening, piece, closing = c.chunk(role=True), c.chunk("Par"), c.chunk(finish="length")
    assert {opening["object"], piece["object"], closing["object"]} == {"chat.completion.chunk"}
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert piece["choices"][0] == {"index": 0, "delta": {"content": "Par"}, "finish_reason": None}
    assert closing["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length"}
    assert c.usage_chunk(openai.usage(5, 2))["choices"] == [] and {piece["id"], closing["id"]} == {c.id}


def test_a_text_completion_whole_and_streamed():
    c = openai.Completion.new("m@q8", chat=False)
    assert c.id.startswith("cmpl-")
    assert c.whole("x", "length", openai.usage(1, 1))["choices"][0] == {"index": 0, "text": "x",
                                                                        "finish_reason": "length", "logprobs": None}
    assert c.chunk("ab")["object"] == "text_completion"
    assert c.chunk("ab")["choices"][0]["text"] == "ab"
    assert c.chunk(finish="stop")["choices"][0] == {"index": 0, "text": "", "finish_reason": "stop", "logprobs": None}


def test_server_sent_event_framing():
    event = openai.sse({"a": "é\n"})
    assert event.startswith("data: ") and event.endswith("\n\n") and event.count("\n") == 2
    assert json.loads(event[len("data: "):]) == {"a": "é\n"}
    assert openai.DONE == "data: [DONE]\n\n"
    assert openai.error_body("bad", code="x") == {"error": {"message": "bad", "type": "invalid_request_error",
                                                            "param": None, "code": "x"}}


def test_completion_requests_ignore_unknown_fields_and_refuse_several_choices():
    assert CompletionRequest(model="m", prompt="p", unknown=1).prompt == "p"
    with pytest.raises(ValueError):
        CompletionRequest(model="m", prompt="p", n=2)
