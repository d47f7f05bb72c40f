"""A fresh clone with no data mirror and no hub: the project's own ResNet-20 (in the repository) is the default
vision model, and the API and CLI classify with it; what needs data says so in one line."""
import io
import subprocess
import sys

import httpx
import numpy as np
from PIL import Image

from conftest import REPO, api_server, without_mirror

OWN = "resnet20-mlxq"


def png_of(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def png(width: int = 64, height: int = 48) -> bytes:
    return png_of(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def run_python(code: str, **env) -> str:
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**without_mirror(), **env}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_without_the_mirror_the_own_resnet_is_the_default_vision_model():
    out = run_python("from core.models import registry; from core.serve import app; "
                     "print(registry.default_vision_model()); print(','.join(app.default_models()))")
    default, served = out.splitlines()
    assert default == OWN
    assert {f"{OWN}@q8", f"{OWN}@q4g32", f"{OWN}@fp"} <= set(served.split(","))


def test_the_api_classifies_uploads_with_the_default_models_and_no_mirror(tmp_path):
    """The server has no mirror; this test process reads a few test images from it (when present) to upload."""
    from conftest import mirror

    with api_server([], tmp_path, env=without_mirror()) as url:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]]
        assert f"{OWN}@q4g32" in ids and not any(i.startswith("resnet20@") for i in ids)
        uploads = [(png(), None)]
        if mirror() is not None:
            from core import data

            images, labels = data.load_cifar10("test")
            uploads += [(png_of(images[i]), data.CIFAR10_CLASSES[labels[i]]) for i in (0, 8000)]
        for model in (f"{OWN}@fp", f"{OWN}@q4g32"):
            for image, label in uploads:
                r = httpx.post(f"{url}/v1/classify", data={"model": model, "top_k": "3"},
                               files={"file": ("image.png", image, "image/png")}, timeout=120)
                assert r.status_code == 200, r.text
                top = r.json()["predictions"]
                assert len(top) == 3 and sum(p["probability"] for p in top) <= 1.0 + 1e-5
                if label is not None:  # two test images the model classifies correctly at both precisions
                    assert top[0]["label"] == label


def test_an_evaluation_without_test_data_says_what_is_missing():
    proc = subprocess.run([sys.executable, "-m", "core", "eval", "--model", OWN, "--limit", "10", "--no-bench"],
                          cwd=REPO, env=without_mirror(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "CIFAR-10 test is not available" in proc.stderr and "MLXQ_MIRROR" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_without_mirror_or_hub_missing_data_is_said_within_two_seconds():
    """The dashboard's test-set sample, Quantize and Sensitivity pages waited 26-29 s for the hub's timeouts."""
    out = run_python("import time; from core import data\n"
                     "start = time.monotonic()\n"
                     "for load in (lambda: data.load_cifar10('test'), data.load_wikitext2_test):\n"
                     "    try:\n        load()\n    except Exception as e:\n        print(type(e).__name__)\n"
                     "print(round(time.monotonic() - start, 2))",
                     HF_ENDPOINT="https://192.0.2.1")  # TEST-NET-1: never routed, whatever this machine's network
    *errors, seconds = out.splitlines()
    assert errors == ["LabError", "LabError"] and float(seconds) <= 2.5
