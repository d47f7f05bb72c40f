"""docs/cli.md, generated from the argparse parsers: every command and subcommand of `python -m core` with its
usage, what it does and a table of its flags. The text depends only on the parsers (usage lines are wrapped at a
fixed width, never the terminal's). Regenerate with `python -m core.cli.docs > docs/cli.md`;
tests/test_docs_cli.py fails when the file and the parsers disagree."""
from __future__ import annotations

import argparse
import sys

from core.cli.parser import build_parser

WIDTH = 100
REGENERATE = "python -m core.cli.docs > docs/cli.md"
PREAMBLE = f"""# Command-line reference

<!-- Generated from the parsers in core/cli/ by core/cli/docs.py; do not edit by hand. Regenerate with
`{REGENERATE}` (tests/test_docs_cli.py fails when this file and the parsers disagree). -->

`./lab COMMAND ...` is `python -m core COMMAND ...` with the environment set (the BLAS preload, the data mirror).
Every command also takes `-h` / `--help`. Bad input (an unknown model, `--q-bits 7`, a group size a mode does not
take, missing data) prints one `error:` line and exits with code 2. The flags of `eval`, `sweep` and `export` are
generated from the fields of `EvalConfig` and `QuantConfig` (core/cli/flags.py).
"""


class _FixedWidth(argparse.HelpFormatter):
    def __init__(self, prog: str):
        super().__init__(prog, width=WIDTH)


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in the order the parser lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            return [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    return []


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, help, parser) depth-first, each command before its subcommands."""
    for name, help_text, sub in _subcommands(parser):
        yield path + (name,), help_text, sub
        yield from _walk(sub, path + (name,))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _metavar(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices is not None and not isinstance(action.choices, dict):
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.metavar or (action.dest.upper() if action.option_strings else action.dest)


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    value = action.default
    if action.nargs == 0 or value is None or value is argparse.SUPPRESS or isinstance(value, bool):
        return ""
    if isinstance(value, (list, tuple)):
        return f"`{','.join(str(v) for v in value)}`" if value and all(v is not None for v in value) else ""
    return f"`{value}`" if isinstance(value, (str, int, float)) else ""


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        text = text % {**vars(action), "prog": prog}
    return _cell(text)


def _flag_table(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        name = ", ".join(action.option_strings) or action.dest
        metavar = _metavar(action)
        flag = f"`{name} {metavar}`" if metavar and action.option_strings else f"`{name}`"
        rows.append(f"| {flag} | {_default(action)} | {_help(action, parser.prog)} |")
    if not rows:
        return []
    return ["| flag | default | meaning |", "|---|---|---|", *rows, ""]


def _usage(parser: argparse.ArgumentParser) -> str:
    parser.formatter_class = _FixedWidth
    return parser.format_usage().strip()


def _section(path: tuple[str, ...], help_text: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = ["#" * min(len(path) + 1, 4) + " " + " ".join(path), ""]
    for text in (help_text, parser.description):
        if text:
            lines += [_cell(text[0].upper() + text[1:]) + ("" if text.endswith(".") else "."), ""]
    lines += ["```text", _usage(parser), "```", ""]
    subs = _subcommands(parser)
    if subs:
        lines += ["| subcommand | what it does |", "|---|---|"]
        lines += [f"| [`{name}`](#{'-'.join(path + (name,))}) | {_cell(h)} |" for name, h, _ in subs] + [""]
    return lines + _flag_table(parser)


def render() -> str:
    """The whole of docs/cli.md."""
    parser = build_parser()
    lines = [PREAMBLE, "```text", _usage(parser), "```", "", "| command | what it does |", "|---|---|"]
    lines += [f"| [`{name}`](#{name}) | {_cell(h)} |" for name, h, _ in _subcommands(parser)] + [""]
    for path, help_text, sub in _walk(parser):
        lines += _section(path, help_text, sub)
    return "\n".join(lines).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.reconfigure(encoding="utf-8")
    sys.stdout.write(render())
