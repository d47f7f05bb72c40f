"""`serve --models NAME=PATH`: folders served beside registry ids. A lab export (a calibrated method) is served
holding exactly its arrays, so its prompt log-probabilities through the API equal the evaluated model's; another
tool's mlx-lm folder answers chats; a ResNet export classifies; bad entries stop the server at start-up with one
clear message."""
import io
import json
import shutil
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import REPO, api_server, free_port, needs_mirror, write_export

# AWQ at 4 bits on a tiny calibration: 2 WikiText-2 chunks of 32 tokens (about a minute and a half on two cores)
AWQ = dict(model="smollm2-135m-instruct", bits=4, method="awq", calib=2, ctx=32)
REGISTRY_LM, REGISTRY_FP, REGISTRY_IMG = "smollm2-135m-instruct@q8", "smollm2-135m-instruct@fp", "resnet20-mlxq@q4g32"
TEXT = "The quick brown fox jumps over the lazy dog. Paris is the capital of France, and Berlin is"


@pytest.fixture(scope="module")
def vision_export(tmp_path_factory):
    """The project's own ResNet-20 at q4g32, exported by the command line (no data mirror needed)."""
    out = tmp_path_factory.mktemp("exports") / "resnet-q4g32"
    run = subprocess.run([sys.executable, "-m", "core", "export", "--model", "resnet20-mlxq", "--q-bits", "4",
                          "--q-group-size", "32", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def awq_export(tmp_path_factory):
    """SmolLM2 quantized by AWQ as `python -m core export` does it (core.quant.recipe.quantize, then the export's
    writer), and the prompt log-probabilities of the evaluated model itself: `quantize(config).deploy()`."""
    from core.deploy.scoring import score_prompt
    from core.quant.config import QuantConfig
    from core.quant.recipe import quantize

    q = quantize(QuantConfig(**AWQ))
    tokens = q.tokenizer.encode(TEXT)
    expected = [entry.logprob for entry in score_prompt(q.deploy(), tokens)[1:]]
    out = tmp_path_factory.mktemp("exports") / "smollm2-awq4"
    written = write_export(q, out)
    return out, written, tokens, expected


@pytest.fixture(scope="module")
def foreign_quantized(awq_export, tmp_path_factory):
    """The AWQ export without the lab's metadata: a quantized mlx-lm folder as any other tool could have written."""
    out = tmp_path_factory.mktemp("foreign") / "smollm2-q4"
    shutil.copytree(awq_export[0], out, ignore=shutil.ignore_patterns("mlxq_export.json"))
    return out


@pytest.fixture(scope="module")
def server(awq_export, foreign_quantized, vision_export, smollm2_dir, tmp_path_factory):
    models = [f"mine={awq_export[0]}", REGISTRY_LM, f"base={smollm2_dir}", REGISTRY_FP, f"img={vision_export}",
              REGISTRY_IMG, f"theirs={foreign_quantized}"]
    with api_server(["--models", ",".join(models)], tmp_path_factory.mktemp("serve")) as url:
        yield url


@needs_mirror
def test_models_lists_folders_beside_registry_ids(server, awq_export, vision_export):
    cards = {c["id"]: c for c in httpx.get(f"{server}/v1/models", timeout=30).json()["data"]}
    assert list(cards) == ["mine", REGISTRY_LM, "base", REGISTRY_FP, "img", REGISTRY_IMG, "theirs"]
    meta = json.loads((awq_export[0] / "mlxq_export.json").read_text())
    assert meta["method"] == "awq" and meta["config"]["calib"] == 2
    mine = cards["mine"]
    assert (mine["kind"], mine["method"], mine["source"]) == ("lm", "awq", "folder")
    assert mine["bits_per_weight"] == pytest.approx(awq_export[1].bits_per_weight, abs=1e-4)
    assert 4.4 < mine["bits_per_weight"] < 4.6  # 4 bits, scales and biases per 64, the norms
    assert cards[REGISTRY_LM] | {"bits_per_weight": 0} == {
        "id": REGISTRY_LM, "object": "model", "created": 0, "owned_by": "mlxq", "kind": "lm", "method": "rtn",
        "bits_per_weight": 0, "source": "registry"}
    assert cards[REGISTRY_LM]["bits_per_weight"] == pytest.approx(8.5)  # 8 bits + two 16-bit numbers per 64
    base = cards["base"]  # another tool's folder: no method known; float32 as stored
    assert (base["kind"], base["method"], base["bits_per_weight"], base["source"]) == ("lm", "unknown", 32.0,
                                                                                         "folder")
    theirs = cards["theirs"]  # the same arrays: bits per weight computed from the folder's shapes
    assert (theirs["kind"], theirs["method"], theirs["source"]) == ("lm", "unknown", "folder")
    assert theirs["bits_per_weight"] == pytest.approx(mine["bits_per_weight"], abs=1e-4)
    img_meta = json.loads((vision_export / "quantization.json").read_text())
    img = cards["img"]
    assert (img["kind"], img["method"], img["source"]) == ("vision", "rtn", "folder")
    assert img["bits_per_weight"] == pytest.approx(img_meta["bits_per_weight"], abs=1e-4)
    assert httpx.get(f"{server}/v1/models/mine", timeout=30).json() == mine
    assert str(awq_export[0]) not in httpx.get(f"{server}/v1/models", timeout=30).text  # paths stay private


@needs_mirror
def test_the_served_export_scores_like_the_evaluated_model(server, awq_export):
    _, _, tokens, expected = awq_export
    body = {"model": "mine", "prompt": tokens, "echo": True, "logprobs": 0, "max_tokens": 0}
    r = httpx.post(f"{server}/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    served = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert served[0] is None and len(served) == len(tokens)
    np.testing.assert_allclose(served[1:], expected, atol=1e-4, rtol=0)
    # the same folder without the lab's metadata loads through mlx-lm's own loader: the same arrays, the same scores
    body["model"] = "theirs"
    theirs = httpx.post(f"{server}/v1/completions", json=body, timeout=300).json()["choices"][0]["logprobs"]
    np.testing.assert_allclose(theirs["token_logprobs"][1:], expected, atol=1e-4, rtol=0)
    # and it is not the round-to-nearest model of the same grid: AWQ's scaling changed the arrays
    body["model"] = REGISTRY_LM
    q8 = httpx.post(f"{server}/v1/completions", json=body, timeout=300).json()["choices"][0]["logprobs"]
    assert np.abs(np.array(q8["token_logprobs"][1:]) - expected).max() > 1e-3


@needs_mirror
def test_a_plain_mlx_lm_folder_chats_like_the_registry_model(server):
    question = [{"role": "user", "content": "What is the capital of France?"}]
    answers = {}
    for model in ("base", REGISTRY_FP):
        r = httpx.post(f"{server}/v1/chat/completions", timeout=300,
                       json={"model": model, "messages": question, "max_tokens": 12, "temperature": 0})
        assert r.status_code == 200, r.text
        answers[model] = r.json()["choices"][0]["message"]["content"]
    assert answers["base"] and answers["base"] == answers[REGISTRY_FP]  # the same weights, in float32 both


def png(seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


@needs_mirror
def test_a_resnet_export_classifies_like_the_registry_model(server):
    results = {}
    for model in ("img", REGISTRY_IMG):  # round-to-nearest q4g32 both: the same arrays
        r = httpx.post(f"{server}/v1/classify", data={"model": model, "top_k": "3"},
                       files={"file": ("x.png", png(0), "image/png")}, timeout=300)
        assert r.status_code == 200, r.text
        results[model] = r.json()["predictions"]
    assert [p["label"] for p in results["img"]] == [p["label"] for p in results[REGISTRY_IMG]]
    np.testing.assert_allclose([p["probability"] for p in results["img"]],
                               [p["probability"] for p in results[REGISTRY_IMG]], atol=1e-5)


@needs_mirror
def test_kinds_and_unknown_names_are_answered_as_before(server):
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "img", **chat}, timeout=60)
    assert r.status_code == 400 and "image classifier" in r.json()["error"]["message"]
    r = httpx.post(f"{server}/v1/classify", data={"model": "mine"}, files={"file": ("x.png", png(1), "image/png")},
                   timeout=60)
    assert r.status_code == 400 and "language model" in r.json()["error"]["message"]
    for name in ("nope", "mine/../base", "../../etc/passwd", str(REPO / "models" / "resnet20-mlxq")):
        r = httpx.post(f"{server}/v1/chat/completions", json={"model": name, **chat}, timeout=60)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found", (name, r.text)
    assert httpx.get(f"{server}/v1/models/nope", timeout=30).status_code == 404


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "a-file.txt").write_text("not a model")
    (root / "empty").mkdir()
    (root / "no-weights").mkdir()
    (root / "no-weights" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return root


@pytest.mark.parametrize("entry, fragment", [
    ("mine={root}/missing", "does not exist"),
    ("mine={root}/a-file.txt", "is a file, not a model folder"),
    ("mine={root}/empty", "is not a model folder"),
    ("mine={root}/no-weights", "no model*.safetensors"),
    ("bad/name={vision}", "not a usable model name"),
    ("mine@q4={vision}", "not a usable model name"),
    ("resnet20={vision}", "is a registry model's name"),
    ("a={vision},resnet20-mlxq@q8,a={vision}", "lists 'a' twice"),
    ("mine=", "names no folder"),
    ("{vision}", "to serve a folder, write NAME=PATH"),
])
def test_bad_entries_stop_the_server_with_one_clear_message(entry, fragment, bad_folders, vision_export):
    models = entry.format(root=bad_folders, vision=vision_export)
    run = subprocess.run([sys.executable, "-m", "core", "serve", "--port", str(free_port()), "--models", models],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and fragment in errors[0], run.stderr
    assert "Traceback" not in run.stderr and "serving" not in run.stderr
