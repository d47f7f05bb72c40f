"""A sweep's configuration: every combination of models x methods x bit widths x group sizes, sharing every other
evaluation setting, validated once (core.eval.sweep runs it; core.jobs.sweep_job sends it to other hosts).

As a job stores it: {"models": [...], "methods": ["rtn"], "bits": [16, 4], "group_sizes": [null], "settings":
{EvalConfig fields shared by every configuration: limit, bench, ...}, "hostfile": null or a path, "out": null or a
CSV path}."""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from core.errors import LabError
from core.eval.config import EvalConfig

VARYING = ("model", "method", "bits", "group_size")  # what a sweep's configurations differ in; the rest is shared
_LISTS = (("models", str), ("methods", str), ("bits", int), ("group_sizes", (int, type(None))))


@dataclass(frozen=True)
class SweepConfig:
    models: tuple[str, ...] = ()
    methods: tuple[str, ...] = ("rtn",)
    bits: tuple[int, ...] = ()
    group_sizes: tuple[int | None, ...] = (None,)  # None: the mode's own
    settings: dict = field(default_factory=dict)  # EvalConfig fields but VARYING, the same for every configuration
    hostfile: str | None = None  # run on these hosts through mlx.launch (a job; this machine first)
    out: str | None = None  # the CSV (default: core.eval.sweep.default_csv)

    def validated(self) -> "SweepConfig":
        """The same sweep with its defaults filled in and its hostfile checked (made absolute), after every
        configuration was built and validated: a mistake in any is a LabError in words before work starts."""
        self.configs()
        return replace(self, models=tuple(self.models), methods=tuple(self.methods or ("rtn",)),
                       bits=tuple(self.bits), group_sizes=tuple(self.group_sizes or (None,)),
                       settings=dict(self.settings or {}), hostfile=checked_hostfile(self.hostfile))

    def configs(self) -> list[EvalConfig]:
        """Every configuration, validated, without repeats."""
        for key, kind in _LISTS:
            value = getattr(self, key)
            if not (isinstance(value, (list, tuple)) and all(isinstance(v, kind) for v in value)):
                raise LabError(f"A sweep's {key!r} must be a list of {'names' if kind is str else 'numbers'}.", key)
        if not self.models or not self.bits:
            raise LabError("A sweep needs at least one model and one bit width.", "models" if self.bits else "bits")
        names = {f.name for f in fields(EvalConfig)} - set(VARYING)
        settings = self.settings or {}
        if not isinstance(settings, dict) or set(settings) - names:
            raise LabError(f"A sweep's shared settings are a dict taking {', '.join(sorted(names))}.", "settings")
        base = EvalConfig(self.models[0], **settings)
        return expand(base, list(self.models), list(self.methods or ("rtn",)), list(self.bits),
                      list(self.group_sizes or (None,)))

    @classmethod
    def covering(cls, configs: list[EvalConfig], hostfile: str | None = None, out: str | None = None) -> "SweepConfig":
        """The sweep covering `configs` (validated EvalConfigs sharing every setting but model, method, bits and
        group size) and their full-precision baseline."""
        unique = lambda values: tuple(dict.fromkeys(values))  # noqa: E731  (order kept)
        return cls(models=unique(c.model for c in configs), methods=unique(c.method for c in configs),
                   bits=unique([16, *(c.bits for c in configs)]), group_sizes=unique(c.group_size for c in configs),
                   settings={k: v for k, v in asdict(configs[0]).items() if k not in VARYING}, hostfile=hostfile,
                   out=out)


def expand(base: EvalConfig, models: list[str], methods: list[str], bits: list[int],
           group_sizes: list[int | None]) -> list[EvalConfig]:
    """Every combination, validated (a mistake in any is reported before work starts), without repeats: full
    precision is one configuration whatever the method or group size."""
    configs, seen = [], set()
    for model, method, b, group in itertools.product(models, methods, bits, group_sizes):
        cfg = replace(base, model=model, method=method, bits=b, group_size=group).validated()
        if cfg not in seen:
            seen.add(cfg)
            configs.append(cfg)
    if not configs:
        raise LabError("The sweep has no configurations: give at least one model and one bit width.")
    return configs


def checked_hostfile(hostfile: str | None) -> str | None:
    """The hostfile's absolute path (the worker runs elsewhere), after checking it: JSON hosts, this machine first
    (rank 0 writes the CSV and gathers every row into its cache, which this machine's pages read)."""
    from core.dist.launch import first_host_is_here, hostfile_hosts

    if hostfile is None:
        return None
    if not hostfile.strip():
        raise LabError("Give the hostfile's path (a JSON list of hosts, as mlx.distributed_config writes it).",
                       "hostfile")
    path = Path(hostfile.strip()).expanduser().resolve()
    hosts = hostfile_hosts(path)
    if not first_host_is_here(path):
        raise LabError(f"The first host of {path.name} ({hosts[0]}) is not this machine: put this machine first "
                       "(it is rank 0, which writes the CSV and gathers every row into this machine's results).",
                       "hostfile", str(path))
    return str(path)
