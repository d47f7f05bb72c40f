"""Shared test set-up: the data mirror (../shared unless MLXQ_MIRROR says otherwise) and a private result cache."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if not os.environ.get("MLXQ_MIRROR") and (REPO.parent / "shared" / "data").is_dir():
    os.environ["MLXQ_MIRROR"] = str(REPO.parent / "shared")


def mirror() -> Path | None:
    root = os.environ.get("MLXQ_MIRROR")
    return Path(root) if root and (Path(root) / "data").is_dir() else None


needs_mirror = pytest.mark.skipif(mirror() is None, reason="no data mirror: set MLXQ_MIRROR (CI has ../shared)")


@pytest.fixture(autouse=True)
def private_results(tmp_path_factory, monkeypatch):
    """Result rows go to a per-session temporary folder, never into the user's cache/results."""
    monkeypatch.setenv("MLXQ_RESULTS", str(tmp_path_factory.getbasetemp() / "results"))


@pytest.fixture(scope="session")
def smollm2_dir():
    from core.gguf import prepare_smollm2
    from core.models import cache_root

    return prepare_smollm2(cache_root())


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    """(model, tokenizer) straight from mlx-lm; shared by tests, so never mutate it."""
    import mlx_lm

    return mlx_lm.load(str(smollm2_dir))
