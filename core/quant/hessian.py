"""What GPTQ needs of a layer's inputs: their second moment H = X^T X / n (HessianCatcher, which records it while
a calibration pass runs) and the upper Cholesky factor of H's damped inverse (inverse_factor), which the column
sweep of core.quant.gptq follows.

The factor is computed in MLX: diagonal blocks on the CPU stream (MLX's linalg runs nowhere else), the products
between them on the default device (a GPU where there is one), and held as compact block lists so that a large
one peaks at about twice its Hessian's size."""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from core import runtime
from core.errors import LabError

DAMPING = 0.01  # fraction of the mean Hessian diagonal added to it (the paper's default)
FACTOR_BLOCK = 1024  # the inverse's factorisation: blocks factored on the CPU, products between them on the device


class HessianCatcher(nn.Module):
    """Stands in for a layer: accumulates X^T X of its inputs (as rows, via `to_rows`), then calls the layer.
    Catchers given one `shared` dict reuse each other's product when called on the very same input array in a
    row (q, k and v of one attention; gate and up of one MLP): that layer follows the first one (`leader`).
    With `skip_output` set the layer is not run (zeros stand for its output): for the last layer of a pass whose
    outputs nobody reads."""

    def __init__(self, layer: nn.Module, to_rows, shared: dict | None = None):
        super().__init__()
        self.layer = layer
        self._to_rows = to_rows
        self._shared = shared
        self._tiles, self._count = {}, 0
        self.leader = self  # the catcher whose Hessian this one's equals
        self.skip_output = False

    def __call__(self, x, *args, **kwargs):
        last = self._shared.get("last") if self._shared is not None else None
        if last is not None and last[0] is x and self._count == 0 and last[1].leader is last[1]:
            self.leader = last[1]  # the same input as the layer called just before: its Hessian is ours
        elif self.leader is not self and (last is None or last[0] is not x):
            raise LabError("GPTQ: a layer that shared its inputs with the one before stopped doing so.")
        if self.leader is self:
            self._add(self._to_rows(x).astype(mx.float32))
            if self._shared is not None:
                self._shared["last"] = (x, self)
        if self._shared is not None:
            self._shared.setdefault("order", []).append(self)
        if self.skip_output:
            return mx.zeros((*x.shape[:-1], self.layer.weight.shape[0]), x.dtype)
        return self.layer(x, *args, **kwargs)

    def _add(self, rows: mx.array) -> None:
        # X^T X is symmetric: for wide inputs only the tiles on and above the diagonal are computed (10 of 16 for
        # an MLP's down projection), and kept as tiles until the Hessian is asked for.
        tile = _gram_tile(rows.shape[1])
        for (i, j), product in _upper_tiles(rows, tile):
            self._tiles[i, j] = product if self._count == 0 else self._tiles[i, j] + product
        self._count += rows.shape[0]

    def pending(self) -> list[mx.array]:
        """What a pass must evaluate with its outputs: the sums so far (left lazy, so that batches on several
        streams run at once)."""
        return list(self._tiles.values())

    def take_hessian(self) -> mx.array:
        """hessian(), its tiles let go one by one as they are written into it."""
        return self._assembled(keep=False)

    def hessian(self) -> mx.array:
        if self.leader is not self:
            return self.leader.hessian()
        return self._assembled(keep=True)

    def _assembled(self, keep: bool) -> mx.array:
        """H written tile by tile into one array (each lower tile the transpose of its upper one), so that the
        peak is H beside the tiles not yet written, not H beside a copy of every row."""
        if not self._tiles:
            raise LabError("GPTQ: a layer saw no calibration inputs.")
        width = max(j + tile.shape[1] for (_, j), tile in self._tiles.items())
        h, scale = mx.zeros((width, width)), 1.0 / max(self._count, 1)
        for i, j in sorted(self._tiles):
            tile = (self._tiles[i, j] if keep else self._tiles.pop((i, j))) * scale
            h[i:i + tile.shape[0], j:j + tile.shape[1]] = tile
            if j > i:
                h[j:j + tile.shape[1], i:i + tile.shape[0]] = tile.T
            mx.eval(h)
        return h


GRAM_TILE = 2048  # inputs at least twice this wide get X^T X by tiles, the lower ones mirrored from the upper


def _gram_tile(width: int) -> int:
    return width if width < 2 * GRAM_TILE else GRAM_TILE


def _upper_tiles(rows: mx.array, tile: int):
    starts = range(0, rows.shape[1], tile)
    for i in starts:
        left = rows[:, i:i + tile].T
        for j in starts:
            if j >= i:
                yield (i, j), left @ rows[:, j:j + tile]


def inverse_factor(hessian) -> mx.array:
    """The upper Cholesky factor U of H^-1 (U^T U = H^-1), row i holding the update direction for the columns
    after i, of H damped by DAMPING * mean(diag) after dead columns (zero diagonal) are given a unit diagonal.
    Float32, as in the reference implementation (float64 changes almost no integer)."""
    return factor_of([hessian])


def factor_of(held: list) -> mx.array:
    """inverse_factor of the one Hessian in `held`, taken out of it so that its memory goes as soon as the damped
    copy exists: a large factor then peaks at about twice the Hessian's size."""
    H = held.pop()
    if isinstance(H, np.ndarray):
        H = mx.array(H.astype(np.float32))
    H = H.astype(mx.float32)
    d = mx.diag(H)
    alive = mx.where(d == 0, 1.0, d)
    damped = [H + mx.diag(alive - d + DAMPING * alive.mean())]
    del H, d, alive
    # With J the order reversal, J H J = N N^T (N lower) gives H^-1 = (J N^-1 J)^T (J N^-1 J), J N^-1 J upper:
    # the factor the reference gets from cholesky, cholesky_inv and an upper cholesky, in half the arithmetic.
    n = damped[0].shape[0]
    if n <= _direct_up_to():
        U = _small(mx.linalg.tri_inv, _small(mx.linalg.cholesky, damped.pop()[::-1, ::-1]))[::-1, ::-1]
    else:
        damped.append(damped.pop()[::-1, ::-1])
        U = _assembled(_blocked_tri_inv(_blocked_cholesky(damped), n), n)
    mx.eval(U)
    return U


def _direct_up_to() -> int:
    """The largest matrix factored whole on the CPU: on a CPU the blocked form gains only for large ones; with a GPU
    its products are where the time would go."""
    return 4 * FACTOR_BLOCK if runtime.backend() == "cpu" else FACTOR_BLOCK


def _small(op, a: mx.array) -> mx.array:
    """`op` (an mx.linalg function) on one diagonal block: MLX's linalg runs on the CPU stream only. One BLAS
    thread: the bundled reference LAPACK calls BLAS in many panel-sized pieces, and a multi-threaded BLIS pays a
    hand-off per call that costs far more than it saves, ruinously so on a busy machine."""
    with mx.stream(mx.cpu), runtime.blas_threads(1):
        out = op(a)
        mx.eval(out)
    return out


def _blocked_cholesky(held: list) -> list[mx.array]:
    """Lower L with L L^T = H (taken out of `held`), right-looking by blocks of FACTOR_BLOCK: each diagonal block
    factored on the CPU, the panel and the trailing update as matrix products on the default device (a GPU where
    there is one). Returns L's block columns without their zeros: column block k is rows k.. of columns k..k+b."""
    trailing = held.pop()
    n, b = trailing.shape[0], FACTOR_BLOCK
    columns = []
    for k in range(0, n, b):
        size = min(b, n - k)
        diag = _small(mx.linalg.cholesky, trailing[:size, :size])
        panel = trailing[size:, :size] @ _small(mx.linalg.tri_inv, diag).T
        columns.append(mx.concatenate([diag, panel]))
        trailing = mx.addmm(trailing[size:, size:], panel, panel.T, alpha=-1.0)  # one new array, not two
        mx.eval(columns[-1], trailing)
    return columns


def _blocked_tri_inv(columns: list[mx.array], n: int) -> list[mx.array]:
    """L^-1 of the lower triangular L given by its block columns (_blocked_cholesky), by block rows: row block i
    is -D_i^-1 (sum over j < i of L_ij (L^-1)_j) beside D_i^-1. Returns each row block without its zeros (columns
    0..k+b); `columns` is emptied as it goes."""
    b, rows = FACTOR_BLOCK, []
    for i, k in enumerate(range(0, n, b)):
        size = min(b, n - k)
        inv = _small(mx.linalg.tri_inv, columns[i][:size])
        if k:  # (L^-1)_j spans columns 0..(j+1)b: each product added into the first (j+1)b columns
            known = mx.zeros((size, k))
            for j in range(i):
                width = rows[j].shape[1]
                known[:, :width] = known[:, :width] + columns[j][k - j * b:k - j * b + size] @ rows[j]
                mx.eval(known)  # one product at a time: the sum is the only thing held
            rows.append(mx.concatenate([-inv @ known, inv], axis=1))
        else:
            rows.append(inv)
        mx.eval(rows[-1])
    columns.clear()
    return rows


def _assembled(rows: list[mx.array], n: int) -> mx.array:
    """J L^-1 J from L^-1's block rows, written into one array as the rows are let go."""
    U, top = mx.zeros((n, n)), 0
    while rows:
        r = rows.pop()  # the last block row, reversed, is U's first
        U[top:top + r.shape[0], n - r.shape[1]:] = r[::-1, ::-1]
        top += r.shape[0]
        mx.eval(U)
    return U
