"""The BLAS `./lab` preloads: measured once per machine (core.blas.probe), cached, overridable.

The baseline is OpenBLAS with its own kernel pick; another candidate (an OpenBLAS kernel named by
OPENBLAS_CORETYPE, or BLIS) replaces it only when its geometric-mean time over the probe's products is at least
CLEAR_WIN lower. MLXQ_BLAS=openblas or blis forces a library (OpenBLAS then still gets its measured kernel);
an OPENBLAS_CORETYPE the user exported keeps OpenBLAS with that kernel."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field

from core import settings
from core.blas import probe

CLEAR_WIN = 0.9  # a candidate replaces OpenBLAS's own pick only when at least 10 % faster
VERSION = 2  # of the probe: cached choices from another version are measured again


@dataclass
class Entry:
    library: str
    path: str
    coretype: str  # OPENBLAS_CORETYPE to export ('' for none)
    kernel: str  # what computed: OpenBLAS's kernel or BLIS's sub-configuration
    score: float  # geometric-mean time relative to the baseline (the first entry)

    @property
    def label(self) -> str:
        return f"{self.library} {self.kernel}"


@dataclass
class Choice:
    cpu: str
    entries: list[Entry] = field(default_factory=list)  # the baseline first
    version: int = VERSION

    def best(self, library: str | None = None) -> Entry | None:
        """The entry to use (of `library` only, if given): the fastest where it clearly beats the baseline."""
        pool = [e for e in self.entries if library in (None, e.library)]
        if not pool:
            return None
        base = pool[0]  # the baseline, or the library's own first entry (OpenBLAS's own pick)
        fastest = min(pool, key=lambda e: e.score)
        return fastest if fastest.score < CLEAR_WIN * base.score else base

    def summary(self) -> str:
        if not self.entries:
            return "No tuned BLAS installed (Debian's libopenblas0-pthread or libblis4-pthread)."
        best = self.best()
        others = ", ".join(f"{e.label} {e.score:.2f}" for e in sorted(self.entries, key=lambda e: e.score))
        base = self.entries[0]
        own = ", OpenBLAS's own pick" if base.library == "OpenBLAS" and not base.coretype else ""
        return (f"{best.label} for {self.cpu or 'this CPU'} (time relative to {base.label}{own}, geometric mean "
                f"over {len(probe.SHAPES)} products on one thread: {others})")


def measure(openblas: str = probe.OPENBLAS, blis: str = probe.BLIS) -> Choice:
    model, flags = probe.cpu_identity()
    timed: list[tuple[probe.Candidate, str, list[float]]] = []
    seen: set[tuple[str, str]] = set()
    for candidate in probe.candidates(flags, openblas, blis):
        result = probe.time_candidate(candidate)
        if result is None or (candidate.library, result[0]) in seen:  # an unknown name falls back to the pick
            continue
        seen.add((candidate.library, result[0]))
        timed.append((candidate, *result))
    if not timed:
        return Choice(model)
    baseline = timed[0][2]
    return Choice(model, [Entry(c.library, c.path, c.coretype, kernel, probe.relative_score(s, baseline))
                          for c, kernel, s in timed])


def _cache_file(openblas: str, blis: str):
    model, flags = probe.cpu_identity()
    libs = [(p, os.stat(p).st_size, int(os.stat(p).st_mtime)) for p in (openblas, blis) if os.path.exists(p)]
    key = json.dumps([VERSION, model, sorted(flags), os.cpu_count(), libs])
    return settings.cache_root() / "blas" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def choice(fresh: bool = False, openblas: str = probe.OPENBLAS, blis: str = probe.BLIS) -> Choice | None:
    """The measured choice for this machine (cached); None off Linux or where no tuned BLAS is installed."""
    if sys.platform != "linux" or not (os.path.exists(openblas) or os.path.exists(blis)):
        return None
    path = _cache_file(openblas, blis)
    if not fresh and path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("version") == VERSION:
                return Choice(data["cpu"], [Entry(**e) for e in data["entries"]], VERSION)
        except (ValueError, TypeError, KeyError):
            pass  # unreadable: measure again
    made = measure(openblas, blis)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(made), indent=2))
    tmp.replace(path)
    return made


LIBRARIES = {"openblas": "OpenBLAS", "blis": "BLIS"}
PRELOAD_ENV = ("LD_PRELOAD", "OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "BLIS_NUM_THREADS")


def preload_env(entry: Entry, threads: int) -> dict[str, str]:
    """This process's environment with `entry`'s library preloaded as ./lab does it (its kernel; BLIS given
    `threads`), for a child process."""
    env = {k: v for k, v in os.environ.items() if k not in PRELOAD_ENV}
    env["LD_PRELOAD"] = entry.path
    if entry.coretype:
        env["OPENBLAS_CORETYPE"] = entry.coretype
    if entry.library == "BLIS":
        env["BLIS_NUM_THREADS"] = str(threads)
    return env


def for_launcher(made: Choice | None) -> tuple[str, str] | None:
    """(library to preload, OPENBLAS_CORETYPE to export or '') as the settings and the measurement say."""
    if made is None or not made.entries:
        return None
    forced = settings.blas()
    if forced and forced not in LIBRARIES:
        print(f"lab: {settings.BLAS}={forced!r} is not one of {', '.join(LIBRARIES)}; using the measured choice",
              file=sys.stderr)
        forced = None
    users_kernel = bool(os.environ.get("OPENBLAS_CORETYPE"))
    if users_kernel:  # OpenBLAS, with the user's kernel
        forced = "openblas"
    entry = made.best(LIBRARIES.get(forced or "")) or made.best()
    coretype = "" if users_kernel or entry.library != "OpenBLAS" else entry.coretype
    return entry.path, coretype
