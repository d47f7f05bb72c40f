"""core.parallel: batches over several CPU streams come back complete and in order, with the right values."""
import mlx.core as mx
import numpy as np

from core.parallel import cpu_streams, map_batches


def test_map_batches_keeps_order_and_values_across_streams():
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((7, 32)).astype(np.float32) for _ in range(5)]  # ragged vs the stream count
    weight = mx.array(rng.standard_normal((32, 3)).astype(np.float32))
    seen = []
    out = list(map_batches(lambda b: mx.softmax(mx.array(b) @ weight, axis=-1), batches,
                           progress=lambda f, m: seen.append(f)))
    assert len(out) == 5
    for b, got in zip(batches, out):
        logits = b @ np.array(weight)
        expected = np.exp(logits - logits.max(1, keepdims=True))
        np.testing.assert_allclose(np.array(got), expected / expected.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert len(cpu_streams()) >= 1


def test_map_batches_works_from_any_thread():
    """Streamlit and the API server evaluate in their own threads; MLX streams are per thread."""
    import threading

    cpu_streams()  # made in this thread first
    results, errors = [], []

    def work():
        try:
            results.extend(np.array(r) for r in map_batches(lambda b: mx.array(b) * 2, [np.ones(3)] * 3))
        except Exception as cause:  # reported to the test thread below
            errors.append(cause)

    for _ in range(2):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert not errors and len(results) == 6 and all((r == 2).all() for r in results)
