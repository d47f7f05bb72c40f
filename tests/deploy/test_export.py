"""`python -m core export`: exported folders reload bit-identically, the LM folder works with mlx-lm unchanged,
and bad input gives one error line."""
import json
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import REPO, needs_mirror, write_export
from core.deploy.exported import load_exported
from core.eval.config import EvalConfig
from core.quant.kernels import use_measured_kernels
from core.quant.layers import dequantize_model, size_bytes
from core.quant.recipe import quantize


def assert_same_arrays(expected_model, actual_model):
    """Every array of the two models equal bit for bit, with the same dtype and names (the lab's exact embedding
    holds an empty dtype probe that files never hold: export writes MLX's own embedding)."""
    expected, actual = dict(tree_flatten(expected_model.parameters())), dict(tree_flatten(actual_model.parameters()))
    expected, actual = ({k: v for k, v in arrays.items() if not k.endswith(".dtype_probe")}
                        for arrays in (expected, actual))
    assert sorted(expected) == sorted(actual)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype, name
        assert np.array_equal(np.array(array), np.array(actual[name])), name


def cli(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=os.environ.copy())


# ---- ResNet ------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet_export(tmp_path_factory):
    """resnet20-mlxq (weights in the repository) at 4 bits, group 64: the in-memory model and its export."""
    quantized = quantize(EvalConfig("resnet20-mlxq", bits=4, group_size=64))
    out = tmp_path_factory.mktemp("export") / "resnet20-q4g64"
    return quantized, write_export(quantized, out)


def test_resnet_export_reloads_bit_identically_from_its_two_files(resnet_export):
    quantized, result = resnet_export
    assert sorted(p.name for p in result.path.iterdir()) == ["model.safetensors", "quantization.json"]
    reloaded, tokenizer = load_exported(result.path)
    assert tokenizer is None
    assert_same_arrays(quantized.model, reloaded)
    meta = json.loads((result.path / "quantization.json").read_text())
    assert meta["architecture"]["name"] == "resnet20" and meta["architecture"]["depth"] == 20
    assert meta["method"] == "rtn" and meta["config"]["bits"] == 4 and meta["config"]["group_size"] == 64
    assert meta["layers"]["conv1"] == {
        "type": "QuantizedConv2d", "quantized": True, "bits": 4, "group_size": 64, "mode": "affine", "k": 27,
        "padded_k": 64, "kernel_size": [3, 3], "in_channels": 3, "out_channels": 16, "stride": [1, 1],
        "padding": [1, 1], "bias": False}
    assert meta["layers"]["layer2.0.conv2"]["k"] == 288 and meta["layers"]["layer2.0.conv2"]["padded_k"] == 320
    assert meta["layers"]["linear"]["type"] == "QuantizedLinear" and len(meta["layers"]) == 20
    assert meta["size_bytes"] == size_bytes(reloaded) == result.size_bytes == 169_808
    assert result.file_bytes == sum(p.stat().st_size for p in result.path.iterdir())


@needs_mirror
def test_resnet_export_logits_equal_the_evaluated_model(resnet_export):
    from core import data
    from core.eval.pipeline import run_eval
    from core.models import resnet

    quantized, result = resnet_export
    images, labels = data.load_cifar10("test")
    idx = data.stratified_indices(labels, 64, 0)
    x = resnet.preprocess(images[idx])
    reloaded, _ = load_exported(result.path)
    assert mx.array_equal(reloaded(x), quantized.model(x)).item()
    # The export holds what an evaluation run measures: same size, same predictions on its images.
    row = run_eval(EvalConfig("resnet20-mlxq", bits=4, group_size=64, limit=64, eval_path="dequant", bench=False))
    assert (row.size_bytes, row.bits_per_weight, row.layers_padded) == (
        result.size_bytes, result.bits_per_weight, result.report.padded)
    predictions = np.array(dequantize_model(reloaded)(x).argmax(axis=-1)).tolist()
    assert predictions == row.predictions


def test_an_interrupted_export_leaves_the_earlier_folder_and_no_debris(resnet_export, tmp_path, monkeypatch):
    import core.deploy.export

    quantized, _ = resnet_export
    out = tmp_path / "out"
    write_export(quantized, out)
    before = (out / "model.safetensors").read_bytes()

    def write_then_interrupt(*args):
        real_write(*args)
        raise KeyboardInterrupt  # Ctrl-C after the weights are written, before the rename

    real_write = core.deploy.export._write_vision
    monkeypatch.setattr(core.deploy.export, "_write_vision", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_export(quantized, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "model.safetensors").read_bytes() == before
    with pytest.raises(KeyboardInterrupt):
        write_export(quantized, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replacing_an_earlier_export_and_force(resnet_export, tmp_path):
    quantized, _ = resnet_export
    out = tmp_path / "out"
    write_export(quantized, out)
    write_export(quantized, out)  # an earlier export is replaced without --force
    assert load_exported(out)[0] is not None
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--force"):
        write_export(quantized, foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="not a folder written by"):
        load_exported(foreign)
    write_export(quantized, foreign, force=True)
    assert sorted(p.name for p in foreign.iterdir()) == ["model.safetensors", "quantization.json"]


# ---- SmolLM2 through mlx-lm --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_export(smollm2_dir, tmp_path_factory):
    quantized = quantize(EvalConfig("smollm2-135m-instruct", bits=4, group_size=64))
    out = tmp_path_factory.mktemp("export") / "smollm2-q4g64"
    return quantized, write_export(quantized, out)


def test_lm_export_is_an_mlx_lm_folder_with_the_exact_arrays(lm_export, smollm2_dir):
    import mlx_lm

    quantized, result = lm_export
    files = sorted(p.name for p in result.path.iterdir())
    assert files == ["config.json", "mlxq_export.json", "model.safetensors", "model.safetensors.index.json",
                     "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (result.path / name).read_bytes() == (smollm2_dir / name).read_bytes()
    config = json.loads((result.path / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}  # every layer alike
    assert config["tie_word_embeddings"] and config["rope_theta"] == 100000.0
    model, _ = mlx_lm.load(str(result.path))
    assert_same_arrays(quantized.model, model)
    assert result.size_bytes == size_bytes(model) == 75_785_472


def test_lm_logits_match_the_in_memory_model(lm_export):
    import mlx_lm

    quantized, result = lm_export
    model, tokenizer = mlx_lm.load(str(result.path))
    ids = mx.array([tokenizer.encode("The capital of France is")])
    # mlx-lm multiplies by the packed weights at any number of rows; the lab's deployed model may de-quantize for
    # several rows on a CPU (tests/quant/test_kernels.py): compared here on the kernel mlx-lm uses.
    use_measured_kernels(quantized.model, enabled=False)
    expected = quantized.model(ids)
    # mlx-lm's QuantizedEmbedding de-quantizes in its scales' dtype, computing scale * q + bias in float16; the
    # project's exact embedding computes it in float32. Those few float16 roundings of the first hidden state
    # (2.4e-4 at most here, embeddings up to 0.62) are the only difference: fed the same embedding output, both
    # models give the same logits.
    emb_mlx, emb_exact = model.model.embed_tokens(ids), quantized.model.model.embed_tokens(ids)
    assert emb_mlx.dtype == mx.float16 and emb_exact.dtype == mx.float32
    assert mx.abs(emb_mlx - emb_exact).max().item() <= 1e-3
    same_input = quantized.model(ids, input_embeddings=emb_mlx)
    assert mx.abs(model(ids) - same_input).max().item() <= 1e-4
    # From token ids, that rounding moves the logits by 0.011 at most here (logits up to 25), so the tolerance
    # is 0.05 rather than 1e-4; greedy generation agrees token for token.
    assert mx.abs(model(ids) - expected).max().item() < 0.05
    tokens = [mlx_lm.generate(m, tokenizer, "The capital of France is", max_tokens=8) for m in (model, quantized.model)]
    assert tokens[0] == tokens[1] and tokens[0].strip()
    # This project's loader swaps in the exact embedding (same arrays): the logits are identical.
    reloaded, _ = load_exported(result.path)
    assert_same_arrays(quantized.model, reloaded)
    assert mx.array_equal(use_measured_kernels(reloaded, enabled=False)(ids), expected).item()
    use_measured_kernels(quantized.model)
    assert mx.array_equal(use_measured_kernels(reloaded)(ids), quantized.model(ids)).item()


def test_mlx_lm_generate_cli_runs_the_exported_folder(lm_export):
    _, result = lm_export
    proc = subprocess.run([sys.executable, "-m", "mlx_lm", "generate", "--model", str(result.path), "--prompt",
                           "The capital of France is", "--max-tokens", "8"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.split("==========")[1].strip()
    assert text and "Generation: 8 tokens" in proc.stdout, proc.stdout


def test_per_layer_settings_reach_mlx_lm(smollm2_dir, tmp_path):
    """Layers that differ from the commonest setting get their own config entry: a dict, or False when kept."""
    import mlx_lm

    from core.models import registry as models
    from core.quant.baseline import load_baseline
    from core.quant.layers import quantize_model
    from core.quant.recipe import Quantized
    from core.quant.spec import QuantSpec

    config = EvalConfig("smollm2-135m-instruct", bits=4, group_size=128).validated()
    info = models.resolve(config.model)
    model, tokenizer = load_baseline(info)
    odd = "model.layers.0.self_attn.q_proj"
    report = quantize_model(model, config.spec, specs={odd: QuantSpec(8, 32)})  # as a mixed recipe would
    assert report.kept  # 576-wide inputs do not divide by 128
    result = write_export(Quantized(config, info, model, tokenizer, report), tmp_path / "out")
    quantization = json.loads((result.path / "config.json").read_text())["quantization"]
    assert quantization[odd] == {"group_size": 32, "bits": 8, "mode": "affine"}
    assert sorted(p for p, v in quantization.items() if v is False) == sorted(report.kept)
    assert {k: quantization[k] for k in ("group_size", "bits", "mode")} == {"group_size": 128, "bits": 4,
                                                                         "mode": "affine"}
    loaded, _ = mlx_lm.load(str(result.path))
    assert_same_arrays(model, loaded)


# ---- the command line --------------------------------------------------------------------------------------------

def test_cli_export_writes_the_folder_and_a_summary(tmp_path):
    out = tmp_path / "r20"
    proc = cli("export", "--model", "resnet20-mlxq", "--q-bits", "4", "--keep-first", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert f"exported resnet20-mlxq q4g64 to {out}" in proc.stderr and "bits/weight" in proc.stderr
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["layers"]["conv1"] == {"type": "Conv2d", "quantized": False, "dtype": "float32",
                                       "reason": "kept in full precision on request"}
    assert meta["config"]["keep_first"] is True


def assert_one_error_line(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--model", "resnet99", "--q-bits", "4"], "Unknown model 'resnet99'"),
    (["--model", "resnet20-mlxq", "--q-bits", "7"], "--q-bits 7"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--q-group-size", "48"], "--q-group-size 48"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--method", "mixed"], "--target-bpw"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--out", "{tmp}/foreign"], "--force"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--out", "{tmp}/a-file/sub"], "Cannot write to --out"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--out", "{tmp}/a-file"], "is not a folder"),
    (["--model", "resnet20-mlxq", "--q-bits", "4", "--out", ".", "--force"], "refusing to replace it"),
])
def test_cli_bad_input_gives_one_error_line_and_exit_code_2(args, fragment, tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    (tmp_path / "a-file").write_text("not a folder")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "new")]
    assert_one_error_line(cli("export", *args), fragment)
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "foreign"]  # nothing written, no debris


def test_lm_export_carries_its_compute_dtype(smollm2_dir, tmp_path):
    """A bfloat16 export: every float array (scales included) in bfloat16, config.json says so, and mlx-lm then
    computes in bfloat16 end to end."""
    import mlx_lm

    quantized = quantize(EvalConfig("smollm2-135m-instruct", bits=4, group_size=64, dtype="bfloat16"))
    result = write_export(quantized, tmp_path / "bf16")
    assert result.dtype == "bfloat16"
    config = json.loads((result.path / "config.json").read_text())
    meta = json.loads((result.path / "mlxq_export.json").read_text())
    assert config["torch_dtype"] == meta["compute_dtype"] == meta["scale_dtype"] == "bfloat16"
    model, tokenizer = mlx_lm.load(str(result.path))
    floats = {v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)}
    assert floats == {mx.bfloat16}
    assert model(mx.array([tokenizer.encode("The sea")])).dtype == mx.bfloat16
    reloaded, _ = load_exported(result.path)
    assert reloaded.model.embed_tokens.compute_dtype == mx.bfloat16
