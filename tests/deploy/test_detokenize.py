"""Exact incremental detokenization (core/deploy/detokenize.py) with SmolLM2's byte-level BPE tokenizer: the
pieces join to the tokenizer's own decoding of the ids, a leading space included, and no piece but the last
ends inside a character."""
import random

import pytest

from conftest import needs_mirror
from core.deploy.detokenize import ExactDetokenizer, decode_with_offsets

pytestmark = needs_mirror
TEXTS = [" Paris.", "Hello world", "日本語のテキスト、絵文字🙂👍🏽 and café", "a\n\n  b\t c", "€€€ ≠ ∑ 𝔘𝔫𝔦"]


def pieces(tokenizer, ids):
    detokenizer = ExactDetokenizer(tokenizer)
    return [detokenizer.add_token(i) for i in ids] + [detokenizer.finalize()], detokenizer


def test_every_cut_of_real_text_joins_to_the_tokenizers_decoding(smollm2):
    tokenizer = smollm2[1]
    cut_mid_character = 0
    for text in TEXTS:
        ids = tokenizer.encode(text)
        for cut in range(1, len(ids) + 1):
            out, _ = pieces(tokenizer, ids[:cut])
            assert "".join(out) == tokenizer.decode(ids[:cut]), (text, cut)
            assert not any(p.endswith("\ufffd") for p in out[:-1]), (text, cut)  # never a split character
            cut_mid_character += out[-1].endswith("\ufffd")
    assert cut_mid_character > 0  # the emoji and CJK cuts did end inside characters: the case is exercised


def test_the_leading_space_and_each_tokens_offset_are_kept(smollm2):
    tokenizer = smollm2[1]
    ids = tokenizer.encode(" Paris.")
    text, offsets = decode_with_offsets(tokenizer, ids)
    assert text == " Paris." and offsets[0] == 0 and len(offsets) == len(ids)
    assert text[offsets[-1]:] == "."


def test_random_ids_including_invalid_bytes_join_exactly(smollm2):
    tokenizer, rng = smollm2[1], random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        out, detokenizer = pieces(tokenizer, ids)
        assert "".join(out) == tokenizer.decode(ids)
        assert detokenizer.offsets == sorted(detokenizer.offsets) and len(detokenizer.offsets) == len(ids)


@pytest.mark.parametrize("length", [2, 300, 700])
def test_prompt_scores_in_head_slices_equal_the_whole_forward_pass(smollm2, length):
    import mlx.core as mx

    from core.deploy.scoring import score_prompt

    model, tokenizer = smollm2
    ids = (tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 80))[:length]
    logits = model(mx.array(ids)[None])[0, :-1].astype(mx.float32)
    expected = (logits - mx.logsumexp(logits, axis=-1, keepdims=True))[mx.arange(len(ids) - 1), mx.array(ids[1:])]
    scores = score_prompt(model, ids, top=2)
    assert scores[0] is None and len(scores) == len(ids)
    got = [s.logprob for s in scores[1:]]
    assert max(abs(a - b) for a, b in zip(got, expected.tolist())) < 1e-4
    assert all(s.top[0][1] >= s.top[1][1] for s in scores[1:])
