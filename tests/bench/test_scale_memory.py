"""A real-shaped language model evaluated in bounded memory, its peak predicted beforehand, and a memory limit
honoured up front (the `scale` bench section measures the same at Llama-3.2-1B's and 8B's shapes)."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, needs_mirror
from core.bench.peak_memory import parse
from core.bench.scale import memory_goal
from core.parallel import parallel_steps
from core.models.synthetic import make_random_lm
from core.quant import footprint
from core.quant.spec import QuantSpec

pytestmark = needs_mirror
GB = 1e9


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, smollm2_dir):
    return make_random_lm("small", tmp_path_factory.mktemp("small") / "model", smollm2_dir)


def _eval(folder, *extra):
    return subprocess.run([sys.executable, "-m", "core.bench.peak_memory", "core", "eval", "--model", str(folder),
                           "--q-bits", "4", "--q-group-size", "64", "--limit", "2", "--no-bench", "--no-cache",
                           "--json", *extra], cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def test_evaluation_peak_is_bounded_and_predicted_within_15_percent(small_model):
    shape = footprint.Shape.from_config(json.loads((small_model / "config.json").read_text()))
    spec = QuantSpec(4, 64).validated()
    predicted = {f.stage: f.peak_bytes for f in footprint.predict(shape, spec, windows=2, parallel=parallel_steps())}["evaluate"]
    bound = memory_goal(shape, spec)
    proc = _eval(small_model, "--memory-limit", f"{bound / GB:.3f}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    row, peak = json.loads(proc.stdout), parse(proc.stderr)
    assert row["kl_mean"] > 0 and row["size_bytes"] == pytest.approx(footprint.model_bytes(shape, spec, "float32"),
                                                                     rel=0.01)
    assert peak["rss_bytes"] <= bound, (peak, bound)
    assert abs(predicted / peak["rss_bytes"] - 1) <= 0.15, (predicted, peak)


def test_a_run_predicted_beyond_the_memory_limit_is_refused_before_it_starts(small_model):
    proc = _eval(small_model, "--memory-limit", "0.5")
    assert proc.returncode == 2
    assert "more than the memory limit of 0.5 GB" in proc.stderr and "Traceback" not in proc.stderr
