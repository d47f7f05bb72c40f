"""llama.cpp's quantization types as llama.cpp makes and runs them: its own quantizer (llama-cpp-python) turns an
F32 GGUF of the lab's full-precision model (written by the lab's exporter) into each type, and its own forward
pass scores the protocol's windows. Bits per weight are read from each file.

All types are loaded at once and the windows are the outer loop, so the float32 reference (the costly part on a
CPU) runs once per window for every type."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np

from core import runtime
from core.bench.frontier.protocol import Journal, Measured, Protocol
from core.bench.llamacpp_peer import summary, window_losses
from core.eval import quality

TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_K_S", "Q4_0", "Q3_K_M", "Q3_K_S", "Q2_K")


def installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def measure(protocol: Protocol, journal: Journal, types=TYPES, progress=None) -> list[Measured]:
    """Every type in `types` not yet in the journal, measured on the protocol's last (smallest) view: llama.cpp
    runs on the CPU, where the full test of nine types takes hours on a small machine."""
    progress = progress or _every_minute()
    import llama_cpp
    from core.deploy.gguf_export import file_bits_per_weight, llama_cpp_quantize, write_gguf

    view = protocol.views[-1]
    todo = [t for t in types if not _done(journal, t, view.key)]
    threads = runtime.usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        f32 = write_gguf(protocol.baseline, Path(tmp) / "f32.gguf").path
        models, bpw, made = {}, {}, {}
        for name in todo:
            path = Path(tmp) / f"{name}.gguf"
            start = time.perf_counter()
            llama_cpp_quantize(f32, path, name)
            made[name] = time.perf_counter() - start
            bpw[name] = file_bits_per_weight(path)
            models[name] = llama_cpp.Llama(model_path=str(path), n_ctx=view.windows.shape[1],
                                           n_batch=view.windows.shape[1], n_threads=threads,
                                           n_threads_batch=threads, logits_all=True, verbose=False)
        nll, kl = {name: [] for name in todo}, {name: [] for name in todo}
        first = view.windows.shape[1] // 2
        for i, window in enumerate(view.windows):
            progress(i / len(view.windows), f"llama.cpp: window {i + 1}/{len(view.windows)}")
            ref = np.array(quality.scored_logprobs(protocol.reference, mx.array(window[None]), first)[0],
                           dtype=np.float64)
            for name, llm in models.items():
                losses, divergence = window_losses(llm, window, ref)
                nll[name].append(losses)
                kl[name].append(divergence)
    for name in todo:
        row = summary(nll[name], kl[name])
        journal.add([Measured("llama.cpp", name, bpw[name], row["ppl"], row["ppl_stderr"], row["kl"], row["kl_stderr"],
                              make_s=made[name], view=view.key)])
    return [journal.records[view.key, f"llama.cpp {t}"] for t in types]


def _done(journal: Journal, name: str, view: str) -> bool:
    return (view, f"llama.cpp {name}") in journal.records


def _every_minute():
    """A progress callback that prints at most once a minute to stderr (a full-test run takes an hour on a CPU)."""
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        if time.monotonic() - last[0] >= 60:
            last[0] = time.monotonic()
            print(f"{message} ({100 * fraction:.0f} %)", file=sys.stderr, flush=True)

    return report

