"""The OpenAI wire format (core.serve.openai) as pure functions: no server, no model."""
import json

import pytest

from core.deploy.sampling import SamplingSettings, TokenLogprob
from core.serve import openai
from core.serve.schemas import ChatRequest, CompletionRequest


def chat_request(**extra) -> ChatRequest:
    return ChatRequest(model="m@fp", messages=[{"role": "user", "content": "hi"}], **extra)


def test_sampling_settings_take_the_defaults_and_check_the_limits():
    params = openai.sampling_params(chat_request(), default_max_tokens=128, max_tokens_limit=512)
    assert params == openai.Params(128, SamplingSettings(temperature=1.0, top_p=1.0, seed=None), ())
    params = openai.sampling_params(chat_request(max_completion_tokens=7, max_tokens=9, stop="END", seed=3,
                                                 logit_bias={"42": -100}, presence_penalty=0.5), 128, 512)
    assert params.max_tokens == 7 and params.stop == ("END",) and params.sampling.seed == 3
    assert params.sampling.logit_bias == {42: -100.0} and params.sampling.presence_penalty == 0.5
    with pytest.raises(openai.ApiError, match="between 1 and 512") as error:
        openai.sampling_params(chat_request(max_tokens=513), 128, 512)
    assert error.value.status == 400 and error.value.param == "max_tokens"
    with pytest.raises(openai.ApiError, match="0 only with echo"):
        openai.sampling_params(chat_request(max_tokens=0), 128, 512)
    assert openai.sampling_params(CompletionRequest(model="m", prompt="p", max_tokens=0), 128, 512,
                                  allow_zero=True).max_tokens == 0
    with pytest.raises(openai.ApiError, match="at most 4"):
        openai.sampling_params(chat_request(stop=["a", "b", "c", "d", "e"]), 128, 512)
    with pytest.raises(openai.ApiError, match="non-empty"):
        openai.sampling_params(chat_request(stop=[""]), 128, 512)


def test_log_probabilities_in_the_chat_and_the_completions_shapes():
    names = {1: ("Hel", b"Hel"), 2: ("lo", b"lo"), 3: ("\ufffd", b"\xe2\x82")}.__getitem__
    entries = [TokenLogprob(1, -0.5, ((1, -0.5), (2, -1.5))), TokenLogprob(3, -2.0, ((2, -0.1),))]
    chat = openai.chat_logprobs(entries, names)
    assert chat["content"][0] == {"token": "Hel", "logprob": -0.5, "bytes": list(b"Hel"),
                                  "top_logprobs": [{"token": "Hel", "logprob": -0.5, "bytes": list(b"Hel")},
                                                   {"token": "lo", "logprob": -1.5, "bytes": list(b"lo")}]}
    assert chat["content"][1]["bytes"] == [0xE2, 0x82]  # part of a character: the exact bytes, not its text
    # an echoed prompt's first token has nothing before it: logprob None, as OpenAI's legacy API answers
    # a token holding part of a character is named by its bytes; offsets are where each token starts in the text
    text = openai.completion_logprobs([None, *entries], names, [2, 1, 3], [10, 12, 15])
    assert text == {"tokens": ["lo", "Hel", "bytes:\\xe2\\x82"], "token_logprobs": [None, -0.5, -2.0],
                    "top_logprobs": [None, {"Hel": -0.5, "lo": -1.5}, {"lo": -0.1}], "text_offset": [10, 12, 15]}


def test_a_chat_completion_whole_and_streamed():
    c = openai.Completion.new("m@fp", chat=True)
    assert c.id.startswith("chatcmpl-") and len(c.id) == len("chatcmpl-") + 24 and c.created > 0
    whole = c.whole("Paris.", "stop", openai.usage(5, 2))
    assert whole["object"] == "chat.completion" and whole["model"] == "m@fp"
    assert whole["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Paris."},
                                 "finish_reason": "stop", "logprobs": None}]
    assert whole["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    opening, piece, closing = c.chunk(role=True), c.chunk("Par"), c.chunk(finish="length")
    assert {opening["object"], piece["object"], closing["object"]} == {"chat.completion.chunk"}
    assert opening["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert piece["choices"][0] == {"index": 0, "delta": {"content": "Par"}, "finish_reason": None, "logprobs": None}
    assert closing["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "length", "logprobs": None}
    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    message = c.whole("", "tool_calls", openai.usage(5, 2), tool_calls=calls)["choices"][0]["message"]
    assert message == {"role": "assistant", "content": None, "tool_calls": calls}
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


def test_requests_refuse_fields_they_do_not_implement_and_accept_what_sdks_send():
    with pytest.raises(ValueError, match="extra_forbidden|Extra inputs"):
        CompletionRequest(model="m", prompt="p", unknown=1)
    with pytest.raises(ValueError):
        CompletionRequest(model="m", prompt="p", n=2)
    with pytest.raises(ValueError):  # strict types: a string is not a number
        CompletionRequest(model="m", prompt="p", max_tokens="8")
    request = ChatRequest(model="m", messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}], n=1)
    # chat templates know 'system', not OpenAI's newer name for it
    assert [m.for_template()["role"] for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[1].for_template()["content"] == "hi"
    assert CompletionRequest(model="m", prompt=[[1, 2], [3]], echo=True, logprobs=0, max_tokens=0).echo
