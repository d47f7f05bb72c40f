"""Config fields that are also command-line flags: each field says its flag, help and parser in its metadata,
and core.cli generates the flags from the dataclass, so eval, sweep and export share one definition."""
from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, field
from typing import Callable


def option(default, help: str, flag: str | None = None, parse: Callable[[str], object] | None = None,
           negate: str | None = None, cli: bool = True, aliases: tuple[str, ...] = (), choices=None,
           metavar: str | None = None, kw_only: bool = False):
    """A dataclass field with its flag: `flag` defaults to --field-name; `parse` turns the flag's text into the
    value; a boolean field becomes `--flag` (store true) or, with `negate`, a `--no-...` flag storing false;
    cli=False keeps the field off the command line; `aliases` are further names of the flag, `choices` the values
    it takes (its help then lists them), `metavar` the name its help gives the value. `kw_only`: a required field
    (default MISSING) after fields with defaults, as a config that extends another adds one."""
    return field(default=default, kw_only=kw_only,
                 metadata={"help": help, "flag": flag, "parse": parse, "negate": negate, "cli": cli,
                           "aliases": tuple(aliases), "choices": choices, "metavar": metavar})


def flag_name(f: Field) -> str:
    return f.metadata.get("negate") or f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def bits_list(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated bit widths like 16,8,4,3, got {text!r}")


def names_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def group_sizes_list(text: str) -> list[int | None]:
    """'32,64' -> [32, 64]; 'default' stands for the mode's own group size."""
    try:
        return [None if g.strip() == "default" else int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated group sizes like 32,64, got {text!r}")
