"""Request bodies of the OpenAI-compatible endpoints, as strict pydantic models: every field is checked for type
and range, and a field the server does not implement is refused by name (extra="forbid"), never ignored."""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.deploy.sampling import MAX_TOP_LOGPROBS

MAX_SEED = 2**63 - 1
Role = Literal["system", "developer", "user", "assistant", "tool"]


class Strict(BaseModel):
    """`null` for an optional field means its default, as in OpenAI's API (client libraries send it); a required
    field stays required. A string holding a lone surrogate (JSON allows the escape, text cannot) is refused."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        if isinstance(data, dict):
            fields = cls.model_fields
            by_alias = {f.alias: name for name, f in fields.items() if f.alias}
            optional = {k for k in data if (f := fields.get(by_alias.get(k, k))) is not None and not f.is_required()}
            return {k: v for k, v in data.items() if not (v is None and k in optional)}
        return data

    @field_validator("*", mode="after")
    @classmethod
    def _whole_characters(cls, value):
        _check_text(value)
        return value


def _check_text(value) -> None:
    """Refuse a lone surrogate anywhere in a string field (nested lists and dicts too), naming the field."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the text holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is "
                             "not a character") from None
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_text(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key)
            _check_text(item)


class ContentPart(Strict):
    type: Literal["text"]
    text: str


class FunctionCall(Strict):
    name: str = Field(min_length=1, max_length=256)
    arguments: str


class ToolCall(Strict):
    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Strict):
    role: Role
    content: Union[str, list[ContentPart], None] = None
    name: str | None = Field(None, max_length=256)
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = Field(None, max_length=256)

    @field_validator("content", mode="before")
    @classmethod
    def _parts_by_name(cls, content):
        """A content part of another type (image_url, input_audio, file ...) is refused by its name, before the
        union's own checks would describe every way it failed."""
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind != "text":
                    raise ValueError(f"content parts of type {kind!r} are not served here: only 'text' parts"
                                     if isinstance(kind, str) else "each content part is an object with a type")
        return content

    @model_validator(mode="after")
    def _content_rules(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs content (only an assistant's may be null)")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def for_template(self) -> dict:
        """The message as chat templates expect it; 'developer' is the newer name of 'system'."""
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [{"id": c.id, "type": "function",
                                  "function": {"name": c.function.name, "arguments": c.function.arguments}}
                                 for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaFormat(Strict):
    name: str = Field("response", max_length=256)
    schema_: dict | None = Field(None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("type json_schema needs json_schema.schema")
        return self


class FunctionDef(Strict):
    name: str = Field(min_length=1, max_length=256)
    description: str | None = None
    parameters: dict | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class Sampling(Strict):
    """What chat and text completions share: the model and how to sample."""

    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=256)  # the caller's own label for abuse tracking: accepted

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream: true")
        return self

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("n > 1 is not supported: send one request per choice (they are batched together)")
        return n

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias):
        if bias is not None:
            if len(bias) > 300:
                raise ValueError("at most 300 tokens can be biased")
            for key, value in bias.items():
                # ASCII digits only: str.isdigit also accepts other scripts' digits, which int() then refuses
                if not (key.isascii() and key.isdigit() and len(key) <= 9) or not -100 <= value <= 100:
                    raise ValueError("keys are token ids and values lie between -100 and 100")
        return bias


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1, max_length=256)
    max_completion_tokens: int | None = Field(None, ge=0)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = Field(None, max_length=128)
    tool_choice: Union[Literal["none", "auto", "required"], dict, None] = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self


class CompletionRequest(Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False
