"""`python -m core export --format gguf`: the lab's grids land in GGUF blocks bit for bit, the file carries what
llama.cpp needs (hyper-parameters, tokenizer, chat template), and llama.cpp itself, where llama-cpp-python is
installed, computes the lab's perplexity from it and answers chat."""
import json
import os
import subprocess
import sys
import time

import gguf
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from conftest import REPO, free_port
from core.deploy.gguf_blocks import encode_layer
from core.deploy.gguf_export import write_gguf
from core.models.gguf import unpermute_rows
from core.quant.config import QuantConfig
from core.quant.layers import _quantized_linear, dequantize_model
from core.quant.quantizers import dequantize_matrix, quantize_matrix
from core.quant.recipe import quantize
from core.quant.spec import QuantSpec

try:
    import llama_cpp
except ImportError:
    llama_cpp = None
needs_llama_cpp = pytest.mark.skipif(llama_cpp is None, reason="llama-cpp-python is not installed (./lab setup --peers)")


def quantized_layer(bits: int, group: int, quantizer: str, rows: int = 64, cols: int = 256) -> nn.Module:
    layer = nn.Linear(cols, rows, bias=False)
    layer.weight = 0.05 * mx.random.normal((rows, cols), key=mx.random.key(bits * 1000 + group))
    return _quantized_linear(layer, QuantSpec(bits, group, "affine", quantizer).validated())


def lab_weights(layer: nn.Module) -> np.ndarray:
    spec = QuantSpec(layer.bits, layer.group_size, layer.mode)
    return np.array(dequantize_matrix(layer.weight, layer.scales, layer.biases, spec))


@pytest.mark.parametrize("bits, group, quantizer, qtype", [
    (4, 32, "minmax", "Q4_1"), (4, 64, "minmax", "Q4_1"), (5, 32, "minmax", "Q5_1"), (5, 128, "minmax", "Q5_1"),
    (4, 64, "symmetric", "Q4_0"), (5, 32, "symmetric", "Q5_0"), (8, 32, "symmetric", "Q8_0"),
    (8, 128, "symmetric", "Q8_0")])
def test_each_grid_a_gguf_type_holds_is_written_bit_for_bit(bits, group, quantizer, qtype):
    layer = quantized_layer(bits, group, quantizer)
    data, written, exact = encode_layer(gguf, layer, None, dequantize_all=False)
    assert (written, exact) == (qtype, True)
    read_back = gguf.quants.dequantize(data, getattr(gguf.GGMLQuantizationType, qtype))
    assert read_back.shape == (64, 256)
    assert np.array_equal(read_back, lab_weights(layer))


@pytest.mark.parametrize("bits, group, quantizer", [(3, 64, "minmax"), (6, 64, "minmax"), (8, 64, "minmax")])
def test_grids_no_gguf_type_holds_become_q8_0_and_say_so(bits, group, quantizer):
    layer = quantized_layer(bits, group, quantizer)
    data, written, exact = encode_layer(gguf, layer, None, dequantize_all=False)
    assert (written, exact) == ("Q8_0", False)
    expected = lab_weights(layer)
    error = np.abs(gguf.quants.dequantize(data, gguf.GGMLQuantizationType.Q8_0) - expected)
    # Q8_0 rounds to 1/254 of each block's range at worst
    assert error.max() <= np.abs(expected).max() / 254 * 1.01


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_the_symmetric_quantizer_is_a_zero_centred_grid(bits):
    w = 0.05 * mx.random.normal((32, 128), key=mx.random.key(bits))
    spec = QuantSpec(bits, 32, "affine", "symmetric").validated()
    assert spec.tag == f"q{bits}g32-sym"
    wq, scales, biases = quantize_matrix(w, spec)
    s, b = np.array(scales.astype(mx.float32)), np.array(biases.astype(mx.float32))
    assert np.array_equal(b, -(2.0 ** (bits - 1)) * s)
    error = np.abs(np.array(dequantize_matrix(wq, scales, biases, spec)) - np.array(w)).reshape(32, 4, 32)
    step = np.abs(s)[..., None]
    # rounding error within half a step, except the far end of the grid (one step short of the extreme's mirror)
    assert (error <= 0.5 * step * 1.001).mean() > 0.99 and (error <= step * 1.001).all()


@pytest.fixture(scope="module")
def smollm2_gguf(smollm2_dir, tmp_path_factory):
    """SmolLM2 at 4 bits, group 64 (the lab's min-max grid): the quantized model and its GGUF."""
    q = quantize(QuantConfig("smollm2-135m-instruct", bits=4, group_size=64))
    out = tmp_path_factory.mktemp("gguf") / "smollm2-q4g64.gguf"
    return q, write_gguf(q, out)


def test_the_gguf_holds_the_model_the_tokenizer_and_the_chat_template(smollm2_gguf, smollm2_dir):
    q, result = smollm2_gguf
    reader = gguf.GGUFReader(str(result.path))

    def field(key):
        return reader.fields[key].contents()

    config = json.loads((smollm2_dir / "config.json").read_text())
    tok_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert field("general.architecture") == "llama"
    assert field("llama.block_count") == config["num_hidden_layers"] == 30
    assert field("llama.embedding_length") == config["hidden_size"]
    assert field("llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert field("llama.rope.freq_base") == pytest.approx(config["rope_theta"])
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "smollm"
    tokens = field("tokenizer.ggml.tokens")
    assert len(tokens) == config["vocab_size"] == 49152
    assert tokens[field("tokenizer.ggml.eos_token_id")] == tok_config["eos_token"]
    assert field("tokenizer.chat_template") == tok_config["chat_template"]
    types = result.tensor_types
    assert types["token_embd.weight"] == "Q4_1" and types["blk.29.ffn_down.weight"] == "Q4_1"
    assert types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types  # tied head
    assert result.requantized == [] and result.gguf_type == "exact"
    assert result.file_bits_per_weight == pytest.approx(5.0)  # Q4_1: 4 bits + a 16-bit scale and bias per 32


def test_every_weight_reads_back_as_the_labs_own(smollm2_gguf):
    q, result = smollm2_gguf
    tensors = {t.name: t for t in gguf.GGUFReader(str(result.path)).tensors}
    lab = dequantize_model(q.model)
    heads, kv_heads = q.model.args.num_attention_heads, q.model.args.num_key_value_heads
    cases = [("token_embd.weight", lab.model.embed_tokens.weight, None),
             ("blk.0.attn_q.weight", lab.model.layers[0].self_attn.q_proj.weight, heads),
             ("blk.7.attn_k.weight", lab.model.layers[7].self_attn.k_proj.weight, kv_heads),
             ("blk.29.ffn_down.weight", lab.model.layers[29].mlp.down_proj.weight, None),
             ("output_norm.weight", lab.model.norm.weight, None)]
    for name, expected, n_head in cases:
        t = tensors[name]
        w = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(np.array(expected).shape)
        if n_head:  # llama.cpp's RoPE row order, undone by the lab's own GGUF reader
            w = np.array(unpermute_rows(mx.array(w), n_head))
        assert np.array_equal(w, np.array(expected)), name


def cli(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())


@pytest.mark.parametrize("args, fragment", [
    (["--model", "smollm2-135m-instruct", "--q-bits", "4", "--format", "gguf", "--out", "{tmp}/m.bin"],
     "should name a .gguf file"),
    (["--model", "smollm2-135m-instruct", "--q-bits", "4", "--format", "gguf", "--gguf-type", "Q9_K",
      "--out", "{tmp}/m.gguf"], "is not one this export makes"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--format", "gguf", "--out", "{tmp}/m.gguf"],
     "GGUF holds language models"),
    (["--model", "smollm2-135m-instruct", "--q-bits", "4", "--gguf-type", "Q4_K_M", "--out", "{tmp}/m"],
     "--gguf-type Q4_K_M: A llama.cpp type goes with the GGUF format"),
    (["--model", "smollm2-135m-instruct", "--q-bits", "4", "--format", "gguf", "--out", "{tmp}/taken.gguf"],
     "a file export did not write"),
])
def test_cli_bad_gguf_requests_get_one_error_line(args, fragment, tmp_path):
    (tmp_path / "taken.gguf").write_text("someone's file")
    result = cli("export", *[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "taken.gguf").read_text() == "someone's file"


def test_cli_writes_a_gguf_and_replaces_its_own(tmp_path):
    out = tmp_path / "m.gguf"
    for _ in range(2):  # the second run replaces the lab's own earlier file without --force
        result = cli("export", "--model", "smollm2-135m-instruct", "--q-bits", "8", "--q-quantizer", "symmetric",
                     "--q-group-size", "32", "--format", "gguf", "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out)
    assert "q8g32-sym" in result.stderr and "the lab's grids bit for bit" in result.stderr
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.3.attn_v.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no staging debris


@needs_llama_cpp
def test_llama_cpp_computes_the_labs_perplexity_from_the_file(smollm2_gguf):
    from core import data
    from core.eval import quality
    from core.bench.llamacpp_peer import llama_perplexity, summary, window_losses
    from core.eval.quality import scored_logprobs

    q, result = smollm2_gguf
    tokens = quality.wikitext_tokens("smollm2-135m-instruct", q.tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)[data.spread_indices(len(tokens) // 512, 2)]
    llm = llama_cpp.Llama(model_path=str(result.path), n_ctx=512, n_batch=512, logits_all=True, verbose=False,
                          n_threads=2)
    assert llm.tokenize(b"Hello, 2024 world!", add_bos=False) == q.tokenizer.encode("Hello, 2024 world!")
    theirs = llama_perplexity(llm, windows)
    ours = quality.perplexity(dequantize_model(q.model), windows)
    assert abs(theirs / ours.ppl - 1) < 0.01, (theirs, ours.ppl)
    # the frontier bench's scorer: same perplexity, and next to no divergence from the lab's logits for the same
    # weights (llama.cpp rounds activations to 8 bits inside its dot products)
    first = windows.shape[1] // 2
    lab_logp = [np.array(scored_logprobs(dequantize_model(q.model), mx.array(w[None]), first)[0], dtype=np.float64)
                for w in windows]
    losses = [window_losses(llm, window, ref) for window, ref in zip(windows, lab_logp)]
    measured = summary([nll for nll, _ in losses], [kl for _, kl in losses])
    assert measured["tokens"] == ours.n_tokens and measured["ppl"] == pytest.approx(theirs, rel=1e-9)
    assert measured["kl"] < 0.01, measured


@needs_llama_cpp
def test_llama_cpp_types_are_made_by_its_own_quantizer_from_the_labs_weights(smollm2_gguf, tmp_path):
    from core import data
    from core.eval import quality
    from core.bench.llamacpp_peer import llama_perplexity

    q, exact = smollm2_gguf
    result = write_gguf(q, tmp_path / "q8_0.gguf", gguf_type="q8_0")
    assert result.gguf_type == "Q8_0" and set(result.tensor_types.values()) == {"Q8_0", "F32"}
    assert result.file_bits_per_weight == pytest.approx(8.5)
    tokens = quality.wikitext_tokens("smollm2-135m-instruct", q.tokenizer)
    windows = quality.chunk_windows(tokens, 512, None)[data.spread_indices(len(tokens) // 512, 2)]
    ppl = {}
    for name, path in (("exact", exact.path), ("q8_0", result.path)):
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, logits_all=True, verbose=False,
                              n_threads=2)
        ppl[name] = llama_perplexity(llm, windows)
    # rounding the lab's 4-bit grid again to 8 bits moves perplexity by about a percent (two windows)
    assert abs(ppl["q8_0"] / ppl["exact"] - 1) < 0.03, ppl


@needs_llama_cpp
def test_llama_cpp_server_answers_chat_from_the_file(smollm2_gguf, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("sse_starlette", reason="llama-cpp-python's server extras are not installed")
    _, result = smollm2_gguf
    port = free_port()
    log = open(tmp_path / "llama-server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(result.path), "--port", str(port),
                             "--n_ctx", "512", "--n_threads", "2"], stdout=log, stderr=subprocess.STDOUT,
                            env=os.environ.copy())
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{url}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, (tmp_path / "llama-server.log").read_text()
            time.sleep(0.5)
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 16, "temperature": 0}).json()
        text = reply["choices"][0]["message"]["content"]
        assert "Paris" in text, reply
    finally:
        proc.terminate()
        proc.wait(timeout=30)
