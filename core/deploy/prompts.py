"""Prompts as tokens, checked for size, with one safety rule: text a user typed never becomes control tokens.
A message containing '<|im_start|>system ...' is tokenized as those characters, so nobody can forge a turn;
the chat template's own markers stay control tokens. `allow_special=True` turns the rule off (an operator's
choice, never a request's)."""
from __future__ import annotations

import math
import secrets

from core.errors import LabError

MAX_PROMPT_CHARS = 4000
MAX_PROMPT_TOKENS = 1024  # the dashboard's chat; a server derives its own (prompt_limit)
CHARS_PER_TOKEN = 8  # text longer than this many characters a token is refused before tokenizing it
UNKNOWN_CONTEXT = 2048  # a model whose config names no context length


def context_length(model) -> int:
    """The model's context length from its config (UNKNOWN_CONTEXT when it names none)."""
    return getattr(getattr(model, "args", None), "max_position_embeddings", None) or UNKNOWN_CONTEXT


def prompt_limit(model, memory_budget_bytes: int, cap: int | None = None) -> int:
    """The longest prompt a server takes for `model`: its context length, at most what one forward pass over the
    prompt can hold within a quarter of the memory budget (the attention scores, heads x n x n in float32, are
    what grows fastest), and at most `cap` (an operator's flag)."""
    context = context_length(model)
    heads = getattr(getattr(model, "args", None), "num_attention_heads", None) or 32
    by_memory = math.isqrt(max(memory_budget_bytes, 0) // (4 * 4 * heads))
    return max(1, min(context, by_memory, cap or context))


def chat_prompt_tokens(tokenizer, messages: list[dict], allow_special: bool = False,
                       template_extras: dict | None = None, limit: int = MAX_PROMPT_TOKENS) -> list[int]:
    """The chat template applied to the messages, with the assistant turn opened; checked for size (at most
    `limit` tokens). `template_extras` are passed to the template (e.g. tools)."""
    if not messages or not all(isinstance(m.get("content"), str) for m in messages):
        raise LabError("A prompt needs at least one message with text.")
    _check_text(messages[-1]["content"], _chars(messages), limit)
    return _checked_length(_chat_tokens(tokenizer, messages, allow_special, template_extras), limit)


def conversation_prompt_tokens(tokenizer, conversations: list[list[dict]]) -> tuple[list[list[int]], int]:
    """One chat prompt per conversation, all of them the same user turns with each model's own earlier answers
    and the same new user message last; the oldest whole turns (a user message and its answer) are left out of
    every prompt alike until all of them fit the limits. Returns (prompts, turns left out). A new message that
    cannot fit even alone is refused like any prompt."""
    if not conversations or len({len(c) for c in conversations}) != 1 or len(conversations[0]) % 2 == 0:
        raise LabError("Each side of a conversation needs the same turns, ending with the user's new message.")
    alone = [chat_prompt_tokens(tokenizer, c[-1:]) for c in conversations]
    turns = len(conversations[0]) // 2
    for left_out in range(turns):
        windows = [c[2 * left_out:] for c in conversations]
        if max(_chars(w) for w in windows) > MAX_PROMPT_CHARS:
            continue  # counting characters is cheap; tokenize only windows that can fit
        prompts = [_chat_tokens(tokenizer, w, False, None) for w in windows]
        if max(len(p) for p in prompts) <= MAX_PROMPT_TOKENS:
            return prompts, left_out
    return alone, turns


def completion_prompt_tokens(tokenizer, text: str, allow_special: bool = False,
                             limit: int = MAX_PROMPT_TOKENS) -> list[int]:
    """A plain-text prompt as tokens, checked like a chat prompt."""
    _check_text(text, len(text), limit)
    return _checked_length(_encode_text(tokenizer, text, allow_special), limit)


def checked_token_prompt(tokens: list[int], vocab_size: int, limit: int = MAX_PROMPT_TOKENS) -> list[int]:
    """A prompt given as token ids (how lm-evaluation-harness sends them): in the vocabulary and not too long."""
    if not tokens:
        raise LabError("The prompt is empty; send at least one token.")
    bad = next((t for t in tokens if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise LabError(f"Token id {bad} is outside the vocabulary (0 to {vocab_size - 1}).")
    return _checked_length(tokens, limit)


def _chat_tokens(tokenizer, messages: list[dict], allow_special: bool, extras: dict | None) -> list[int]:
    """The chat template applied, unchecked for size; control-token text in a message stays text unless allowed."""
    if not getattr(tokenizer, "chat_template", None):
        return _encode_text(tokenizer, "\n".join(m["content"] for m in messages), allow_special)
    if allow_special or not any(_special_strings_in(tokenizer, m["content"]) for m in messages):
        return list(_render(tokenizer, messages, True, extras))
    return _tokens_with_plain_contents(tokenizer, messages, extras)


def _chars(messages: list[dict]) -> int:
    return sum(len(m["content"]) for m in messages)


def _render(tokenizer, messages: list[dict], tokenize: bool, extras: dict | None):
    try:
        return tokenizer.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=True,
                                             **(extras or {}))
    except LabError:
        raise
    except Exception as e:  # a template that refuses a role or an ordering raises its own error types
        raise LabError(f"The model's chat template refused these messages: {e}") from e


def _special_strings(tokenizer) -> list[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return [t.content for t in decoder.values() if getattr(t, "special", False) and t.content]


def _special_strings_in(tokenizer, text: str) -> bool:
    return any(s in text for s in _special_strings(tokenizer))


def _encode_text(tokenizer, text: str, allow_special: bool) -> list[int]:
    if allow_special or not _special_strings_in(tokenizer, text):
        return list(tokenizer.encode(text))
    return list(tokenizer.encode(text, split_special_tokens=True))


def _tokens_with_plain_contents(tokenizer, messages: list[dict], extras: dict | None) -> list[int]:
    """Render the template around placeholders, then tokenize its own text normally and each message's content
    with special-token parsing off."""
    marker = f"\u2063mlxq{secrets.token_hex(8)}\u2063"
    placeholders = [{**m, "content": f"{marker}{i}{marker}"} for i, m in enumerate(messages)]
    pieces = _render(tokenizer, placeholders, False, extras).split(marker)
    if len(pieces) != 2 * len(messages) + 1:
        raise LabError("This model's chat template rewrites message text, so control-token text in a message "
                       "cannot be kept as plain text; remove it from the message.")
    tokens: list[int] = []
    for index, piece in enumerate(pieces):
        if index % 2:
            content = messages[int(piece)]["content"]
            tokens += tokenizer.encode(content, add_special_tokens=False, split_special_tokens=True)
        elif piece:
            tokens += tokenizer.encode(piece, add_special_tokens=False)
    return tokens


def _check_text(last: str, chars: int, limit: int = MAX_PROMPT_TOKENS) -> None:
    if not last.strip():
        raise LabError("The prompt is empty; type something to send.")
    most = max(MAX_PROMPT_CHARS, CHARS_PER_TOKEN * limit)
    if chars > most:
        raise LabError(f"The prompt is {chars} characters long; the limit is {most}.")


def _checked_length(tokens, limit: int = MAX_PROMPT_TOKENS) -> list[int]:
    if len(tokens) > limit:
        raise LabError(f"The prompt is {len(tokens)} tokens long; the limit is {limit}.")
    return list(tokens)
