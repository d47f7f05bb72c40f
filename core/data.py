"""Datasets: CIFAR-10 and WikiText-2 from the offline mirror (MLXQ_MIRROR) or, without it, the Hugging Face hub."""
from __future__ import annotations

import os
import socket
import time
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from core.errors import LabError
from core.settings import mirror_root

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_HUB = "uoft-cs/cifar10"
WIKITEXT_HUB = ("Salesforce/wikitext", "wikitext-2-raw-v1")


def mirror_file(relative: str) -> Path | None:
    """The mirror's copy of a file, or None when there is no mirror or it lacks the file."""
    root = mirror_root()
    if root is not None and (root / relative).is_file():
        return root / relative
    return None


def _missing(what: str, relative: str, hub: str, cause: Exception) -> LabError:
    where = f"MLXQ_MIRROR={mirror_root()} has no {relative}" if mirror_root() else "MLXQ_MIRROR is not set"
    return LabError(
        f"{what} is not available: {where}, and the Hugging Face hub ({hub}) could not be reached. Fix: point MLXQ_MIRROR at a data mirror holding {relative}, "
        "or run with internet access so `datasets` can download it."
    )


HUB_PROBE_S = 2.0  # a hub that does not take a connection this fast is taken as unreachable
_PROBE_KEPT_S = 60.0
_probe = {"at": float("-inf"), "ok": False}


def hub_reachable() -> bool:
    """Whether the Hugging Face hub takes a connection within HUB_PROBE_S (the answer kept for a minute). Without
    this, a machine with no route to it waits tens of seconds for `datasets`' own timeouts before the same
    "not available"; HF_HUB_OFFLINE=1 says no at once."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    now = time.monotonic()
    if now - _probe["at"] > _PROBE_KEPT_S:
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
        try:
            socket.create_connection((host, 443), timeout=HUB_PROBE_S).close()
            _probe["ok"] = True
        except OSError:
            _probe["ok"] = False
        _probe["at"] = now
    return _probe["ok"]


def _mirror_or_hub(what: str, relative: str, hub: str, read_mirror, read_hub):
    """The mirror's file through read_mirror(path), else read_hub(); a failure of both is one LabError, at once
    when the hub cannot be reached."""
    path = mirror_file(relative)
    if path is not None:
        return read_mirror(path)
    if not hub_reachable():
        raise _missing(what, relative, hub, OSError(f"no connection within {HUB_PROBE_S:g} s"))
    try:
        return read_hub()
    except Exception as cause:  # any failure of the hub path means: data missing
        raise _missing(what, relative, hub, cause) from cause


def _hub_split(name: str, config: str | None, split: str):
    from datasets import load_dataset

    return load_dataset(name, config, split=split)


@lru_cache(maxsize=2)
def load_cifar10(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 32, 32, 3] (RGB, HWC) and labels uint8 [N]."""
    if split not in ("train", "test"):
        raise LabError(f"CIFAR-10 split must be 'train' or 'test', not {split!r}.")

    def from_mirror(path):
        with np.load(path) as npz:
            return npz["x"], npz["y"].astype(np.uint8)

    def from_hub():
        rows = _hub_split(CIFAR10_HUB, None, split)
        images = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in rows["img"]])
        return images, np.asarray(rows["label"], dtype=np.uint8)

    return _mirror_or_hub(f"CIFAR-10 {split}", f"data/cifar10/cifar10_{split}.npz", CIFAR10_HUB, from_mirror, from_hub)


def stratified_indices(labels: np.ndarray, limit: int | None, seed: int = 0) -> np.ndarray:
    """A deterministic subset of `limit` items spread evenly over the classes (all items if limit is None).

    The mirror is sorted by class, so a plain prefix would be a single class."""
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n)
    if limit <= 0:
        raise LabError(f"--limit must be a positive number of items, not {limit}.")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    # Round-robin over the classes so any limit is as balanced as it can be.
    picked = [idx[i] for i in range(max(map(len, per_class))) for idx in per_class if i < len(idx)]
    return np.sort(np.asarray(picked[:limit]))


@lru_cache(maxsize=1)
def load_wikitext2_test() -> str:
    """The raw WikiText-2 test split, as the byte-exact wiki.test.raw (hub rows keep their newlines)."""
    return _mirror_or_hub("WikiText-2 test", "data/wikitext-2-raw/wiki.test.raw", "/".join(WIKITEXT_HUB),
                          lambda p: p.read_text(encoding="utf-8-sig"),
                          lambda: "".join(_hub_split(*WIKITEXT_HUB, "test")["text"]))


def load_wikitext2_calibration() -> str:
    """Calibration text (the v1 validation split): never the test set."""
    return _mirror_or_hub("WikiText-2 validation", "data/wikitext-2/wiki.valid.tokens",
                          "Salesforce/wikitext/wikitext-2-v1", lambda p: p.read_text(encoding="utf-8-sig"),
                          lambda: "".join(_hub_split("Salesforce/wikitext", "wikitext-2-v1", "validation")["text"]))


def spread_indices(total: int, limit: int | None) -> np.ndarray:
    """`limit` indices evenly spread over range(total) (all of them if limit is None)."""
    if limit is None or limit >= total:
        return np.arange(total)
    if limit <= 0:
        raise LabError(f"--limit must be a positive number of items, not {limit}.")
    return np.unique(np.linspace(0, total - 1, limit).round().astype(int))
