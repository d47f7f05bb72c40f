"""Tool calling and response formats on the chat endpoint: what a model's chat template can serve, the template
arguments for it, tool calls parsed out of the answer with mlx-lm's parser for the model, and the JSON schema
a response_format asks for (enforced by core.deploy.constrained). A request for
something the model or the server cannot do gets a 400 that says so, never a silent plain answer."""
from __future__ import annotations

import json
import uuid

from core.serve.openai import ApiError
from core.serve.schemas import ChatRequest


def refuse_unserved(body: ChatRequest) -> None:
    """The checks that need no model."""
    if body.tool_choice is not None and not body.tools:
        raise ApiError(400, "tool_choice needs tools.", param="tool_choice")
    if body.tools and body.stream:
        raise ApiError(400, "Tool calls are returned whole: send tools without stream.", param="stream")
    if body.tool_choice not in (None, "auto", "none"):
        raise ApiError(400, "tool_choice 'required' and named functions are not supported; use 'auto' or 'none'.",
                       param="tool_choice")
    if body.tools and wants_json(body):
        raise ApiError(400, "Send either tools or a JSON response_format, not both.", param="response_format")


def wants_json(body: ChatRequest) -> bool:
    return body.response_format is not None and body.response_format.type != "text"


def json_schema(body: ChatRequest) -> dict | None:
    """The schema the answer must follow; None for any JSON object (type json_object)."""
    if body.response_format.type == "json_schema":
        return body.response_format.json_schema.schema_
    return None


def template_extras(tokenizer, body: ChatRequest) -> dict:
    """Arguments for the chat template: the tools, where the model can call them."""
    if not body.tools or body.tool_choice == "none":
        return {}
    if not getattr(tokenizer, "has_tool_calling", False):
        raise ApiError(400, f"{body.model}'s chat template has no tool calling; send the request without tools.",
                       param="tools")
    return {"tools": [t.model_dump(exclude_none=True) for t in body.tools]}


def parse_calls(tokenizer, text: str) -> tuple[str, list[dict]]:
    """(the answer's text outside tool calls, the calls in OpenAI's shape). A call that does not parse stays in
    the text, so nothing the model said is lost."""
    start, end = getattr(tokenizer, "tool_call_start", None), getattr(tokenizer, "tool_call_end", None)
    if not start or start not in text:
        return text, []
    kept, calls, rest = [], [], text
    while start in rest:
        before, _, after = rest.partition(start)
        body, found_end, rest = after.partition(end) if end else (after, "", "")
        kept.append(before)
        try:
            parsed = tokenizer.tool_parser(body, None)
        except (ValueError, KeyError, TypeError):
            kept.append(start + body + found_end)
            continue
        for call in parsed if isinstance(parsed, list) else [parsed]:
            arguments = call.get("arguments", {})
            calls.append({"id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                          "function": {"name": call.get("name", ""),
                                       "arguments": arguments if isinstance(arguments, str)
                                       else json.dumps(arguments, ensure_ascii=False)}})
    kept.append(rest)
    return "".join(kept).strip(), calls
