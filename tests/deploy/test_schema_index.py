"""Bounded index builds for JSON schemas (core/deploy/schema_index.py): the size check before anything is built,
and the child process that builds, answers, and is stopped at its deadline."""
import asyncio
import json

import pytest
from outlines_core import Vocabulary
from outlines_core.json_schema import build_regex_from_schema

from core.deploy.schema_index import MAX_REPETITION_GROWTH, SchemaError, build, check_size, repetition_growth


def regex(schema: dict) -> str:
    return build_regex_from_schema(json.dumps(schema))


def string_of(n: int) -> dict:
    return {"type": "object", "properties": {"x": {"type": "string", "maxLength": n}}, "required": ["x"]}


def test_bounded_repetitions_are_what_grows():
    assert repetition_growth(regex({"type": "object"})) == 0  # long, but nothing bounded to write out
    small, large = repetition_growth(regex(string_of(16))), repetition_growth(regex(string_of(1000)))
    assert 0 < small < 100 and large > 30 * small  # grows with maxLength
    nested = {"type": "object", "properties": {"x": {"type": "array", "items": string_of(20)["properties"]["x"],
                                                     "maxItems": 50}}, "required": ["x"]}
    assert repetition_growth(regex(nested)) > 50 * 20  # nested bounds multiply
    check_size(regex(string_of(64)))
    with pytest.raises(SchemaError, match=f"the limit is {MAX_REPETITION_GROWTH}"):
        check_size(regex(string_of(100_000)))


ASCII = Vocabulary(3, {bytes([c]): [c + 10] for c in range(32, 127)})


def test_the_child_builds_an_index_that_guides():
    from outlines_core import Guide

    index, size = asyncio.run(build(regex(string_of(8)), ASCII))
    assert size > 0 and Guide(index).get_tokens()  # a usable index came back


def test_a_build_past_its_deadline_is_stopped_and_refused():
    with pytest.raises(SchemaError, match="took more than"):
        asyncio.run(build(regex(string_of(3000)), ASCII, timeout_s=0.05))


def test_a_regex_the_vocabulary_cannot_spell_is_refused_in_words():
    digits_only = Vocabulary(3, {bytes([c]): [c] for c in b"0123456789"})
    with pytest.raises(SchemaError, match="cannot be enforced"):
        asyncio.run(build(regex(string_of(4)), digits_only))
