"""Building a JSON schema's token index with bounded work: the schema's regular expression is sized before
anything is built (bounded repetitions multiply the automaton's states), and the index is built in a child
process under a deadline and a memory limit, which is killed when the deadline passes or the client goes away.
outlines-core builds in native code that a thread cannot interrupt, and one large `maxLength` makes it grow by
megabytes a second for minutes; a child can always be stopped.

`python -m core.deploy.schema_index` is the child: it reads (regex, vocabulary) pickled on stdin, writes the
pickled index to stdout."""
from __future__ import annotations

import asyncio
import pickle
import sys

from core.errors import LabError

MAX_REPETITION_GROWTH = 1000  # parts bounded repetitions add (a string of maxLength 256 adds about 770)
BUILD_TIMEOUT_S = 30.0
BUILD_MEMORY_BYTES = 4 * 1024**3  # address space of the child


class SchemaError(LabError):
    """A schema that cannot be enforced, or not within the server's bounds."""


def repetition_growth(regex: str) -> int | None:
    """How much larger the regex gets with every bounded repetition written out ({0,300} of a class adds 299
    copies of it), which is how its automaton grows; None where Python's parser does not read the regex (the
    build's deadline still bounds it)."""
    import re._constants as c
    import re._parser as parser

    try:
        tree = parser.parse(regex)
    except Exception:  # syntax Python's re does not share with the Rust regex the index is built from
        return None

    def size(items, expand: bool) -> int:
        total = 0
        for op, arg in items:
            if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
                low, high, sub = arg
                copies = high if expand and high != c.MAXREPEAT else 1
                total += size(sub, expand) * max(copies, 1)
            elif op is c.SUBPATTERN:
                total += size(arg[-1], expand)
            elif op is c.BRANCH:
                total += sum(size(branch, expand) for branch in arg[1])
            elif op is c.ATOMIC_GROUP:
                total += size(arg, expand)
            else:
                total += 1
        return total

    return size(tree, True) - size(tree, False)


def check_size(regex: str) -> None:
    growth = repetition_growth(regex)
    if growth is not None and growth > MAX_REPETITION_GROWTH:
        raise SchemaError(f"This JSON schema is too large to enforce here: its bounded repetitions (maxLength, "
                          f"maxItems, pattern counts) written out add {growth} parts to its automaton; the limit is "
                          f"{MAX_REPETITION_GROWTH}. Lower the bounds, or leave strings unbounded.")


async def build(regex: str, vocabulary, timeout_s: float = BUILD_TIMEOUT_S):
    """(index, its pickled size) built in a child process; SchemaError past the deadline or the memory limit."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "core.deploy.schema_index", str(BUILD_MEMORY_BYTES), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(child.communicate(pickle.dumps((regex, vocabulary))), timeout_s)
    except asyncio.TimeoutError:
        raise SchemaError(f"This JSON schema's index took more than {timeout_s:g} s to build; simplify the "
                          "schema.") from None
    finally:
        if child.returncode is None:  # the deadline passed or the request was cancelled: stop the build
            child.kill()
            await child.wait()
    if child.returncode != 0:
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or ["it stopped"]
        if "MemoryError" in reason[0] or child.returncode < 0:
            raise SchemaError("This JSON schema's index needs more memory than the server allows; simplify it.")
        raise SchemaError(f"This JSON schema cannot be enforced with this model's vocabulary: {reason[0]}")
    return pickle.loads(out), len(out)


def _child() -> None:
    import resource

    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from outlines_core import Index

    regex, vocabulary = pickle.loads(sys.stdin.buffer.read())
    try:
        index = Index(regex, vocabulary)
    except Exception as e:  # the library's own errors: its message names the problem
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.buffer.write(pickle.dumps(index))


if __name__ == "__main__":
    _child()
