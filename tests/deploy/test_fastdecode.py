"""The compiled decode step (core/deploy/fastdecode.py) generates mlx-lm's tokens; the engine choice is explicit."""
import mlx.core as mx
import pytest
from mlx_lm.generate import stream_generate
from mlx_lm.sample_utils import make_sampler

from core.deploy import fastdecode, generate, prompts
from core.errors import LabError
from core.quant.layers import quantize_model
from core.quant.spec import QuantSpec


def _tokens(responses) -> list[int]:
    return [r.token for r in responses]


def _greedy_pair(model, tokenizer, n=12):
    prompt = prompts.chat_prompt_tokens(tokenizer, [{"role": "user", "content": "Name three colours."}])
    greedy = make_sampler(temp=0.0)
    theirs = list(stream_generate(model, tokenizer, prompt, max_tokens=n, sampler=greedy))
    ours = list(fastdecode.stream_generate(model, tokenizer, prompt, n, greedy))
    return theirs, ours


def test_compiled_greedy_decoding_gives_mlx_lm_tokens_and_text(smollm2):
    model, tokenizer = smollm2
    theirs, ours = _greedy_pair(model, tokenizer)
    assert _tokens(ours) == _tokens(theirs) and len(ours) == 12
    assert "".join(r.text for r in ours) == "".join(r.text for r in theirs)
    assert ours[-1].finish_reason == theirs[-1].finish_reason == "length"


def test_compiled_decoding_of_a_quantized_model(smollm2_dir):
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(smollm2_dir))  # a private copy: quantized in place
    quantize_model(model, QuantSpec(4, 64))
    theirs, ours = _greedy_pair(model, tokenizer, n=8)
    assert _tokens(ours) == _tokens(theirs)


def test_engine_choice(smollm2, monkeypatch):
    monkeypatch.delenv("MLXQ_DECODE_ENGINE", raising=False)
    assert generate.decode_engine(smollm2[0]) == "mlx-lm"  # the default: measured at least as fast
    model, _ = smollm2
    assert fastdecode.supports(model) and not fastdecode.supports(mx)  # mx: no layers at all
    monkeypatch.setenv("MLXQ_DECODE_ENGINE", "compiled")
    assert generate.decode_engine(model) == "compiled"
    monkeypatch.setenv("MLXQ_DECODE_ENGINE", "fast")
    with pytest.raises(LabError, match="MLXQ_DECODE_ENGINE"):
        generate.decode_engine(model)
