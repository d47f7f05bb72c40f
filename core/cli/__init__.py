"""`python -m core ...`: the command line. Flags are parsed here; the work is done by core functions."""
from core.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
