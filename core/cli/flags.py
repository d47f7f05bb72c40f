"""Command-line flags generated from a config dataclass: each field's metadata (core.options) names its flag,
help and parser, so eval, sweep and export take exactly the fields their configs have."""
from __future__ import annotations

import argparse
from dataclasses import fields

from core.options import flag_name, has_default


def add_config_flags(parser: argparse.ArgumentParser, config_cls, skip: tuple[str, ...] = (), **overrides) -> None:
    """One flag per field of `config_cls`; `overrides` maps a field name to argparse settings that replace the
    generated ones (a sweep's list of widths), `skip` leaves fields off."""
    for f in fields(config_cls):
        if f.name in skip or not f.metadata.get("cli", True):
            continue
        kwargs = {"dest": f.name, "help": f.metadata.get("help")}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_false" if f.metadata.get("negate") else "store_true"
        else:
            kwargs["metavar"] = flag_name(f).lstrip("-").upper().replace("-", "_")
            kwargs["type"] = f.metadata.get("parse") or (type(f.default) if has_default(f) else str)
            if has_default(f):
                kwargs["default"] = f.default
            else:
                kwargs["required"] = True
        kwargs.update(overrides.get(f.name, {}))
        parser.add_argument(flag_name(f), **kwargs)


def config_from_args(config_cls, args: argparse.Namespace, **values):
    """The config the parsed flags describe; `values` set fields the flags do not (or replace them)."""
    given = {f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)}
    return config_cls(**{**given, **values})
