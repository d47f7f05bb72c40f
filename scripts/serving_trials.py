"""More trials of one serving round than the bench takes: this server against mlx_lm.server (on the lab's export
of the same model), N alternating trials at a given concurrency and answer length, medians and ranges.
Usage: python scripts/serving_trials.py MODEL_ID CLIENTS MAX_TOKENS TRIALS"""
import statistics
import sys
import tempfile
from pathlib import Path

from core import runtime
from core.bench import serving as sb

runtime.configure_process()  # as `python -m core` does (the export below runs in this process)
model_id, clients, max_tokens, trials = sys.argv[1], *map(int, sys.argv[2:5])
with tempfile.TemporaryDirectory() as tmp:
    ours_cmd = [sys.executable, "-m", "core", "serve", "--models", model_id, "--max-batch", str(max(clients, 1))]
    folder = sb.export_for_peer(model_id, Path(tmp) / "peer")
    peer_cmd = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--log-level", "WARNING",
                "--decode-concurrency", str(max(clients, 1))]
    with sb.running_server(ours_cmd, Path(tmp) / "ours.log") as ours, \
            sb.running_server(peer_cmd, Path(tmp) / "peer.log", ready_path="/v1/models") as peer:
        for url, model in ((ours, model_id), (peer, "default_model")):
            sb.stream_one(url, model, sb.PROMPTS[0], 8)
        rounds = sb.alternating_rounds((("mlx_lm.server", peer, "default_model"), ("project", ours, model_id)),
                                       clients, max_tokens, trials)
medians = {name: statistics.median(r.tokens_per_s for r in runs) for name, runs in rounds.items()}
for name, runs in rounds.items():
    print(f"{model_id} {clients} clients, {max_tokens} tokens, {name}: median {medians[name]:.1f} tokens/s "
          f"(trials {', '.join(f'{r.tokens_per_s:.1f}' for r in runs)}), ITL p50 median "
          f"{statistics.median(r.itl_p50_ms for r in runs):.2f} ms")
print(f"project / mlx_lm.server: {medians['project'] / medians['mlx_lm.server']:.2f}x")
