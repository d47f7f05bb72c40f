"""A sensitivity run: its configuration (the model, the widths each layer is measured at, the group size, the
calibration data, an optional bits-per-weight budget), validated once, and `run_sensitivity`, the one call the
command line, the jobs and the dashboard make (core.quant.sensitivity measures; core.quant.mixed allocates)."""
from __future__ import annotations

import time
from dataclasses import MISSING, dataclass, replace

from core.errors import LabError
from core.models import registry
from core.options import bits_list, option, positive_int
from core.quant.calibration import CalibrationData, default_size
from core.quant.mixed import allocation_for
from core.quant.sensitivity import cached_sensitivity, checked_widths, layer_sensitivity

WIDTHS = (2, 3, 4, 8)  # measured unless told otherwise
FORM_CONTEXTS = (256, 512)  # the chunk lengths the dashboard's form offers (the command line takes any)
FORM_TARGET_BPW = 4.5  # the bits-per-weight budget the dashboard's forms start from (mixed precision)

_CALIB_HELP = (f"CIFAR-10 train images (default {default_size('sensitivity', 'vision')}) or WikiText-2 validation "
               f"chunks (default {default_size('sensitivity', 'lm')}; a GPU affords more)")


@dataclass(frozen=True)
class SensitivityConfig:
    """Everything that defines a sensitivity table; `validated()` fills in every default."""

    model: str = option(MISSING, "registry name, an mlx-lm folder or a Hugging Face id")
    bits: tuple[int, ...] = option(WIDTHS, f"comma-separated widths (default {','.join(map(str, WIDTHS))})",
                                   flag="--bits", aliases=("--q-bits",), parse=bits_list)
    group_size: int | None = option(None, "affine group size: 32, 64 (default) or 128", flag="--q-group-size",
                                    parse=int)
    calib: int | None = option(None, _CALIB_HELP, parse=positive_int)
    ctx: int = option(512, "LM calibration chunk length in tokens", parse=positive_int)
    seed: int = option(0, "seed of the calibration image choice")
    target_bpw: float | None = option(None, "also print the mixed-precision allocation", parse=float)

    def validated(self) -> "SensitivityConfig":
        """The same config with every default filled in (widths in order, the group size, the calibration size; a
        budget of 0 is none), or a LabError that says in words what is wrong."""
        kind = registry.resolve(self.model).kind
        if self.ctx <= 0:
            raise LabError(f"The chunk length must be a positive number of tokens, not {self.ctx}.", "ctx", self.ctx)
        if self.target_bpw is not None and self.target_bpw < 0:
            raise LabError(f"The bits-per-weight budget must be a positive number, not {self.target_bpw:g}.",
                           "target_bpw", self.target_bpw)
        calib = default_size("sensitivity", kind) if self.calib is None else self.calib
        widths, group = checked_widths(self.bits, self.group_size, CalibrationData(calib, self.ctx, self.seed))
        return replace(self, bits=tuple(widths), group_size=group, calib=calib, target_bpw=self.target_bpw or None)

    def calibration(self) -> CalibrationData:
        """The calibration data of this (validated) config."""
        return CalibrationData(self.calib, self.ctx, self.seed)


@dataclass
class SensitivityRun:
    config: SensitivityConfig  # validated
    rows: list[dict]  # one per layer and width, in model order (core.quant.sensitivity)
    allocation: object | None  # core.quant.mixed.Allocation for the config's budget, if it has one
    seconds: float

    def summary(self) -> dict:
        """The rows and, given a budget, the allocation: what a job records and `sensitivity --json` prints."""
        if self.allocation is None:
            return {"rows": self.rows}
        return {"rows": self.rows, "allocation": self.allocation.bits,
                "predicted_bits_per_weight": self.allocation.predicted_bpw}


def run_sensitivity(config: SensitivityConfig, use_cache: bool = True, progress=None) -> SensitivityRun:
    """Measure the table (each width cached as it is measured) and allocate the budget, if there is one."""
    cfg = config.validated()
    started = time.perf_counter()
    rows = layer_sensitivity(cfg.model, cfg.bits, cfg.group_size, cfg.calibration(), progress=progress,
                             use_cache=use_cache)
    allocation = allocation_for(rows, cfg.target_bpw, cfg.group_size) if cfg.target_bpw else None
    return SensitivityRun(cfg, rows, allocation, time.perf_counter() - started)


def cached_table(config: SensitivityConfig) -> list[dict] | None:
    """The table when every width is cached, else None; never measures (the dashboard shows it at once)."""
    cfg = config.validated()
    return cached_sensitivity(cfg.model, cfg.bits, cfg.group_size, cfg.calibration())
