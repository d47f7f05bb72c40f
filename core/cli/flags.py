"""Command-line flags generated from a config dataclass: each field's metadata (core.options) names its flag,
help and parser, so every run command takes exactly the fields its config has."""
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
            if f.metadata.get("choices") is not None:
                kwargs["choices"] = f.metadata["choices"]  # the help lists them, as argparse does
            else:
                kwargs["metavar"] = f.metadata.get("metavar") or flag_name(f).lstrip("-").upper().replace("-", "_")
            kwargs["type"] = f.metadata.get("parse") or (type(f.default) if has_default(f) else str)
            if has_default(f):
                kwargs["default"] = f.default
            else:
                kwargs["required"] = True
        kwargs.update(overrides.get(f.name, {}))
        parser.add_argument(flag_name(f), *f.metadata.get("aliases", ()), **kwargs)


def config_from_args(config_cls, args: argparse.Namespace, **values):
    """The config the parsed flags describe; `values` set fields the flags do not (or replace them)."""
    given = {f.name: getattr(args, f.name) for f in fields(config_cls) if hasattr(args, f.name)}
    return config_cls(**{**given, **values})


def flag_for(parser: argparse.ArgumentParser, args: argparse.Namespace, setting: str,
             typed: list[str]) -> str | None:
    """The flag of the command `args` ran that sets the config field `setting`: the name the user typed (of a
    flag with several), else its first name; None when the command has no such flag."""
    while True:  # down to the subcommand that ran
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None or getattr(args, sub.dest, None) not in sub.choices:
            break
        parser = sub.choices[getattr(args, sub.dest)]
    names = next((a.option_strings for a in parser._actions if a.dest == setting and a.option_strings), None)
    if not names:
        return None
    return next((n for n in names if any(t == n or t.startswith(n + "=") for t in typed)), names[0])


def sweep_from_args(args: argparse.Namespace, **values):
    """The SweepConfig of `sweep`'s flags: the varying fields as lists, every other EvalConfig flag shared."""
    from core.eval.config import EvalConfig
    from core.eval.sweep_config import VARYING, SweepConfig

    settings = {f.name: getattr(args, f.name) for f in fields(EvalConfig) if f.name not in VARYING}
    return SweepConfig(models=args.model, methods=args.method, bits=args.bits, group_sizes=args.group_size,
                       settings=settings, out=args.out, **values)
