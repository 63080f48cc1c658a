"""Pure aggregation maths (numpy in, numpy out)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.summation import block_of, block_sums, combine


def weighted_average(
    weights: Sequence[float], updates: Sequence[dict[str, np.ndarray]],
    blocks: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Σᵢ wᵢ·uᵢ / Σᵢ wᵢ per key, summed in float64 in blocks (:mod:`fedsim.summation`;
    update i's block is ``blocks[i]``, by default its position in the list // BLOCK),
    cast back to each array's dtype. All updates must have the same keys and shapes."""
    if len(weights) != len(updates) or not updates:
        raise ValueError(f"need one weight per update, got {len(weights)} and {len(updates)}")
    total = float(np.sum(np.asarray(weights, dtype=np.float64)))
    if not total > 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    if blocks is None:
        blocks = [block_of(i) for i in range(len(updates))]
    dtypes = {key: np.asarray(value).dtype for key, value in updates[0].items()}
    return combine(block_sums(weights, updates, blocks), total, dtypes)


def sample_clients(num_clients: int, fraction: float, rng: np.random.Generator) -> list[int]:
    """``max(1, round(fraction·num_clients))`` distinct clients, sorted."""
    count = max(1, int(round(fraction * num_clients)))
    if count >= num_clients:
        return list(range(num_clients))
    return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))


def orthonormal_columns(matrix: np.ndarray) -> np.ndarray:
    """Q of the reduced QR decomposition, signs fixed so diag(R) ≥ 0 (deterministic)."""
    q, r = np.linalg.qr(matrix)
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return q * signs


def principal_angle_distance(estimate: np.ndarray, truth: np.ndarray) -> float:
    """‖(I − B̂B̂ᵀ)B*‖₂² with B̂ the orthonormalised ``estimate`` (d × k) and ``truth``
    B* (d × k, orthonormal columns): the squared sine of the largest principal angle."""
    basis = orthonormal_columns(estimate.astype(np.float64))
    residual = truth - basis @ (basis.T @ truth)
    return float(np.linalg.norm(residual, ord=2) ** 2)
