"""On-disk result cache: one JSON file per key, written atomically, checked with a checksum on read."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path


def digest(payload: dict) -> str:
    """A stable key for everything that changes a result."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and a rename: readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ResultCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.json"

    def read(self, key: str) -> dict | None:
        """The stored body, or None when absent; a corrupt entry is removed (and so recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = json.loads(path.read_text())
            if entry["checksum"] == _checksum(entry["body"]):
                return entry["body"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        warnings.warn(f"cache entry {path.name} is corrupt; it will be recomputed", RuntimeWarning, stacklevel=2)
        path.unlink(missing_ok=True)
        return None

    def write(self, key: str, body: dict) -> None:
        atomic_write_text(self.path(key), json.dumps({"checksum": _checksum(body), "body": body}, sort_keys=True))

    def items(self) -> list[tuple[str, dict]]:
        """(key, body) of every valid entry (for tables and charts)."""
        if not self.directory.is_dir():
            return []
        pairs = ((p.stem, self.read(p.stem)) for p in sorted(self.directory.glob("*.json")))
        return [(key, body) for key, body in pairs if body is not None]


class Memo:
    """A process-wide table, keyed by a model's name, of values that are slow to compute and do not change while
    the process runs (a model's tokenized test text, its fingerprint); named for what it holds."""

    def __init__(self, holds: str):
        self.holds = holds
        self._values: dict = {}

    def __repr__(self) -> str:
        return f"Memo({self.holds!r}, {len(self._values)} entries)"

    def get(self, key, compute):
        """The value for `key`, computed by `compute()` the first time it is asked for."""
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def put(self, key, value) -> None:
        self._values[key] = value
