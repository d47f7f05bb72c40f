"""An mlx-lm model folder read lazily: the model's structure costs nothing until a piece of it is evaluated.

mlx-lm's `load_model(path, lazy=True)` builds the model with arrays that read the safetensors only when
evaluated, and applies the architecture's own renaming and any stored quantization. Once evaluated, an array
keeps its data for as long as the model holds it, so a piece wanted for a while is taken from a fresh lazy model
(`piece`): dropping the piece frees it, and nothing else of the checkpoint was ever read."""
from __future__ import annotations

import json
from pathlib import Path

import mlx.nn as nn

from core.errors import LabError


class LazyCheckpoint:
    """The weights of an mlx-lm folder, read piece by piece in their stored dtype."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.config = json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as cause:
            raise LabError(f"{self.path} has no readable config.json: {cause}") from cause
        self.files = sorted(self.path.glob("model*.safetensors"))
        if not self.files:
            raise LabError(f"{self.path} has no model*.safetensors weights.")

    def model(self) -> nn.Module:
        """A fresh model whose arrays are not read yet."""
        from mlx_lm.utils import load_model

        try:
            model, _ = load_model(self.path, lazy=True)
        except Exception as cause:  # mlx-lm says what is wrong in its own words; keep them, add where
            raise LabError(f"mlx-lm cannot load {self.path}: {cause}") from cause
        return model

    def piece(self, path: str) -> nn.Module:
        """The module at dotted `path` (e.g. 'model.layers.3') of a fresh lazy model, as stored."""
        module = self.model()
        for key in path.split("."):
            module = module[int(key)] if isinstance(module, list) else module[key]
        return module

    def stored_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)

    def tokenizer(self):
        from mlx_lm.utils import load_tokenizer

        return load_tokenizer(self.path, eos_token_ids=self.config.get("eos_token_id"))
