"""docs/cli.md is generated from the parsers (core/cli/docs.py): it fails here when a flag, a default or a help
text changed and the file was not regenerated. No MLX work: only the parsers are built."""
import difflib
from pathlib import Path

from core.cli.docs import REGENERATE, render

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_docs_cli_matches_the_parsers():
    rendered = render()
    written = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    if written != rendered:
        diff = difflib.unified_diff(written.splitlines(), rendered.splitlines(), "docs/cli.md", "the parsers",
                                    lineterm="", n=1)
        shown = "\n".join(list(diff)[:40])
        raise AssertionError(f"docs/cli.md differs from the parsers; regenerate it with `{REGENERATE}`\n{shown}")


def test_rendering_ignores_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "300")
    assert render() == narrow
