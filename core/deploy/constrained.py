"""Constrained decoding for `response_format`: the model can only emit text that matches a JSON schema (or, for
`json_object`, any JSON object). outlines-core turns the schema into a regular expression and the regular
expression into an index over the tokenizer's vocabulary (which tokens may follow in each automaton state);
a logits processor masks every other token at each step. Indexes are built once per (tokenizer, schema) and
kept, since building one for a general schema takes seconds; building is bounded (core.deploy.schema_index)."""
from __future__ import annotations

import json
from collections import OrderedDict

import mlx.core as mx

from core.deploy import schema_index
from core.deploy.schema_index import SchemaError
from core.deploy.scoring import byte_decoder

ANY_OBJECT = {"type": "object"}
MAX_SCHEMA_CHARS = 16_000
MAX_INDEXES = 16
MAX_INDEX_BYTES = 512 * 1024**2


def _vocabulary(tokenizer):
    """outlines-core's vocabulary: every non-special token as its exact bytes, end of text as the final token."""
    from outlines_core import Vocabulary

    decoder, special = byte_decoder(), set(tokenizer.all_special_ids)
    pieces: dict[bytes, list[int]] = {}
    for piece, token in tokenizer.get_vocab().items():
        if token in special:
            continue
        raw = bytes(decoder[c] for c in piece) if all(c in decoder for c in piece) else piece.encode()
        pieces.setdefault(raw, []).append(token)
    return Vocabulary(tokenizer.eos_token_id, pieces)


class IndexCache:
    """Indexes by (tokenizer, schema), least recently used dropped beyond MAX_INDEXES or MAX_INDEX_BYTES (their
    pickled size stands for their memory); built by core.deploy.schema_index with bounded work."""

    def __init__(self, build_timeout_s: float = schema_index.BUILD_TIMEOUT_S):
        self.build_timeout_s = build_timeout_s
        self._vocabularies: dict[int, object] = {}
        self._indexes: OrderedDict[tuple[int, str], tuple[object, int]] = OrderedDict()

    async def index(self, tokenizer, schema: dict | None):
        """The index for `schema` (None: any JSON object); SchemaError in words for one that cannot be enforced
        or is too large to. Cancelling the awaiting task stops a build in progress."""
        from outlines_core.json_schema import build_regex_from_schema

        text = json.dumps(ANY_OBJECT if schema is None else schema, sort_keys=True)
        if len(text) > MAX_SCHEMA_CHARS:
            raise SchemaError(f"The JSON schema is {len(text)} characters long; the limit is {MAX_SCHEMA_CHARS}.")
        key = (id(tokenizer), text)
        if key in self._indexes:
            self._indexes.move_to_end(key)
            return self._indexes[key][0]
        try:
            regex = build_regex_from_schema(text)
        except Exception as e:  # the library's own error types for schemas it cannot express
            raise SchemaError(f"This JSON schema cannot be enforced: {e}") from e
        schema_index.check_size(regex)
        if id(tokenizer) not in self._vocabularies:
            self._vocabularies[id(tokenizer)] = _vocabulary(tokenizer)
        index, size = await schema_index.build(regex, self._vocabularies[id(tokenizer)], self.build_timeout_s)
        self._indexes[key] = (index, size)
        while len(self._indexes) > MAX_INDEXES or (
                len(self._indexes) > 1 and sum(n for _, n in self._indexes.values()) > MAX_INDEX_BYTES):
            self._indexes.popitem(last=False)
        return index


class JsonConstraint:
    """A logits processor for one request: tokens the schema does not allow next get probability zero. It
    follows the generated tokens through the context mlx-lm passes to every processor."""

    def __init__(self, index, end_token: int):
        from outlines_core import Guide

        self.guide, self.end_token = Guide(index), end_token
        self.seen: int | None = None  # context length at the first call (the prompt)
        self.ended = False

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        length = int(context.size)
        if self.seen is None:
            self.seen = length
        elif length > self.seen:
            for token in context.reshape(-1)[self.seen:].tolist():
                # the batch computes one step ahead, so a step may follow the end of text: nothing to constrain
                self.ended = self.ended or token == self.end_token
                if not self.ended:
                    self.guide.advance(token, return_tokens=False)
            self.seen = length
        if self.ended:
            return logits
        allowed = mx.array(self.guide.get_tokens(), dtype=mx.uint32)
        mask = mx.full((logits.shape[-1],), -float("inf"), dtype=logits.dtype)
        mask[allowed] = 0
        return logits + mask
