"""A job's spec is plain JSON: the fields of its run's config (or a list of them), and `use_cache` where the run
reads a cache. These turn a spec into configs, refusing in words what a config has no field for."""
from __future__ import annotations

from dataclasses import fields

from core.errors import LabError
from core.options import has_default


def check_keys(given: dict, allowed, what: str, required=()) -> None:
    """A LabError in words for a setting that `what` does not take, or one it needs and was not given."""
    if not isinstance(given, dict):
        raise LabError(f"The settings of {what} must be a dict of name: value.")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise LabError(f"{what[0].upper() + what[1:]} has no setting {', '.join(map(repr, unknown))}; it takes "
                       f"{', '.join(sorted(allowed))}.")
    missing = [name for name in required if name not in given]
    if missing:
        raise LabError(f"{what[0].upper() + what[1:]} needs {', '.join(map(repr, missing))}.")


def from_spec(cls, values: dict, what: str, also: tuple[str, ...] = ()):
    """An instance of the config dataclass `cls` from `values` (which may also hold the names in `also`, left for
    the caller), refusing names it has no field for, in words."""
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if not has_default(f)]
    check_keys(values, [*names, *also], what, required)
    return cls(**{k: v for k, v in values.items() if k in names})
