"""The bench sections: `frontier` (every tool this machine has); `frontier-lab`, `frontier-mixed`, `frontier-dwq`
and `frontier-mlx-lm` (the lab's grids and methods, its mixed and its distilled recipes, mlx-lm's recipes: they want
a GPU for the full test) and `frontier-llama` (llama.cpp's types, which run on the CPU). Each measured
subject goes to a journal beside the report as soon as it is measured; a rerun with the same journal and protocol
measures only what is missing."""
from __future__ import annotations

from pathlib import Path

from core.bench.frontier import lab_recipes, llama_types, mlx_lm_recipes
from core.bench.frontier.protocol import Journal, protocol
from core.bench.rows import BenchRow

TOOLS = ("lab", "mixed", "dwq", "mlx-lm", "llama.cpp")  # "mixed", "dwq": the lab's mixed and distilled recipes


def frontier(chunks: int | None = None, journal: Path | None = None, compare: int | None = None,
             time_limit: float | None = None, tools=TOOLS) -> list[BenchRow]:
    """Rows for every subject of `tools` on every WikiText-2 test chunk (or `chunks` of them evenly spread) and,
    with `compare`, also on that many evenly spread chunks (llama.cpp's types only on those); no subject starts
    after `time_limit` seconds (the rest are reported as not measured)."""
    proto = protocol(chunks, compare, time_limit)
    book = Journal(journal, proto)
    measured = []
    for tool, recipes in (("lab", lab_recipes.GRIDS_AND_METHODS), ("mixed", lab_recipes.MIXED),
                          ("dwq", lab_recipes.DISTILLED)):
        if tool in tools:
            measured += lab_recipes.measure(proto, book, recipes)
    if "mlx-lm" in tools:
        measured += mlx_lm_recipes.measure(proto, book)
    if "llama.cpp" in tools and llama_types.installed():
        measured += llama_types.measure(proto, book)
    where = {v.key: v.where for v in proto.views}
    rows = [r for m in measured for r in m.rows(where[m.view])]
    if "llama.cpp" in tools and not llama_types.installed():
        rows.append(BenchRow("frontier", "llama.cpp", "not measured", float("nan"), "",
                             "llama-cpp-python is not installed (./lab setup --peers)"))
    return rows


def _only(*tools):
    return lambda chunks=None, journal=None, compare=None, time_limit=None: frontier(chunks, journal, compare,
                                                                                     time_limit, tools)


# `frontier` measures everything; the parts exist so that one GPU can run them side by side in separate processes
# and a CPU can take the llama.cpp part alone.
SECTIONS = {"frontier": frontier, "frontier-lab": _only("lab"), "frontier-mixed": _only("mixed"),
            "frontier-dwq": _only("dwq"), "frontier-mlx-lm": _only("mlx-lm"), "frontier-llama": _only("llama.cpp")}
