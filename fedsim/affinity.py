"""Inter-client affinity (TAG) and the grouping it implies: pure maths, numpy in, numpy out.

Fifty et al., NeurIPS 2021 ("Efficiently Identifying Task Groupings for Multi-Task
Learning"; reference code google-research/google-research ``tag/``): the lookahead
affinity of task i onto task j is Z_{i→j} = 1 − L_j(θ after i's step) / L_j(θ); groups
are chosen to maximise the mean over tasks of the mean affinity onto a task from the
other members of its group. Here a task is a client and "i's step" is i's local body
update Δᵢ. Matrices are indexed ``affinity[i, j]`` = Z_{i→j} (row = the client whose
update is applied, column = the client whose loss is measured).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

SINGLETON = -1e6
"""The score of a client alone in its group: TAG's network selection scores a task alone
at -1e6 (it has no other member to learn from), so a partition avoids singletons where
it can."""
RESTARTS = 20
"""Beyond exact search: seeded random partitions refined like the clustering's, the best
kept (the clustering's partition unless one scores strictly higher)."""
EXACT_UP_TO = 10
"""Exact search over all partitions up to this many clients (S(10, 4) = 34,105
partitions); clustering of the symmetrised affinity beyond."""


def lookahead_affinity(loss_before: float, loss_after: float) -> float:
    """Z = 1 − L(θ + Δ)/L(θ): positive when the peer's step lowers this client's loss."""
    if not loss_before > 0:
        raise ValueError(f"the loss at θ must be > 0 to measure affinity, got {loss_before}")
    return 1.0 - float(loss_after) / float(loss_before)


def running_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Ẑ = total / count where a pair was measured, nan where it never was."""
    out = np.full(total.shape, np.nan)
    seen = count > 0
    out[seen] = total[seen] / count[seen]
    return out


def tag_objective(affinity: np.ndarray, labels: np.ndarray | list[int]) -> float:
    """Mean over clients j of the mean of Z_{i→j} over the other members i of j's group
    (``labels[j]`` = j's group); a client alone scores :data:`SINGLETON`. Unmeasured
    pairs (nan) count as 0."""
    z = np.nan_to_num(np.asarray(affinity, dtype=np.float64), nan=0.0)
    labels = np.asarray(labels)
    scores = np.empty(len(labels))
    for j in range(len(labels)):
        others = np.flatnonzero((labels == labels[j]) & (np.arange(len(labels)) != j))
        scores[j] = z[others, j].mean() if len(others) else SINGLETON
    return float(scores.mean())


def partitions(n: int, k: int) -> Iterator[tuple[int, ...]]:
    """Every partition of clients 0..n-1 into exactly ``k`` non-empty groups, once each,
    as labels in restricted-growth form (client 0 in group 0, a new group numbered next),
    in lexicographic order."""
    if not 1 <= k <= n:
        return
    labels = [0] * n

    def grow(i: int, used: int) -> Iterator[tuple[int, ...]]:
        if n - i < k - used:  # too few clients left to open the missing groups
            return
        if i == n:
            yield tuple(labels)
            return
        for g in range(min(used + 1, k)):
            labels[i] = g
            yield from grow(i + 1, max(used, g + 1))

    labels[0] = 0
    yield from grow(1, 1)


def exact_grouping(affinity: np.ndarray, k: int) -> np.ndarray:
    """The partition into ``k`` groups with the highest :func:`tag_objective` (TAG's
    network selection restricted to partitions); ties go to the first in
    :func:`partitions` order."""
    n = len(affinity)
    best, best_value = None, -np.inf
    for labels in partitions(n, k):
        value = tag_objective(affinity, labels)
        if value > best_value + 1e-12:
            best, best_value = labels, value
    if best is None:
        raise ValueError(f"cannot split {n} clients into {k} groups")
    return np.asarray(best)


def average_linkage(similarity: np.ndarray, k: int) -> np.ndarray:
    """Agglomerative clustering into ``k`` groups: start from singletons and merge the two
    groups of highest mean pairwise similarity (average linkage; ties to the lowest
    indices). Labels are renumbered in order of each group's first client."""
    s = np.asarray(similarity, dtype=np.float64)
    groups = [[i] for i in range(len(s))]
    while len(groups) > k:
        best, pair = -np.inf, (0, 1)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                value = s[np.ix_(groups[a], groups[b])].mean()
                if value > best + 1e-12:
                    best, pair = value, (a, b)
        a, b = pair
        groups[a] = sorted(groups[a] + groups.pop(b))
    labels = np.empty(len(s), dtype=np.int64)
    for g, members in enumerate(sorted(groups)):
        labels[members] = g
    return labels


def refine(affinity: np.ndarray, labels: np.ndarray, k: int, max_passes: int = 100) -> np.ndarray:
    """Single-client moves to another group, each the best that raises
    :func:`tag_objective`, until none does (no group is emptied)."""
    labels = np.asarray(labels).copy()
    value = tag_objective(affinity, labels)
    for _ in range(max_passes):
        best = (value, None, None)
        for j in range(len(labels)):
            if np.sum(labels == labels[j]) == 1:
                continue
            for g in range(k):
                if g == labels[j]:
                    continue
                trial = labels.copy()
                trial[j] = g
                score = tag_objective(affinity, trial)
                if score > best[0] + 1e-12:
                    best = (score, j, g)
        if best[1] is None:
            break
        value, labels[best[1]] = best[0], best[2]
    return canonical(labels)


def canonical(labels: np.ndarray | list[int]) -> np.ndarray:
    """Labels renumbered by first appearance (0 for client 0's group, ...)."""
    seen: dict[int, int] = {}
    return np.asarray([seen.setdefault(int(g), len(seen)) for g in labels], dtype=np.int64)


def find_groups(
    affinity: np.ndarray, k: int, seed: int = 0, exact_up_to: int = EXACT_UP_TO, restarts: int = RESTARTS
) -> tuple[np.ndarray, str]:
    """(labels, method): exact search up to ``exact_up_to`` clients (``"exact"``), else
    average-linkage clustering of the symmetrised affinity (Z + Zᵀ)/2 refined by
    single-client moves on TAG's objective, and ``restarts`` seeded random partitions
    refined the same way, the best kept (``"clustering"``). Deterministic in ``seed``."""
    z = np.nan_to_num(np.asarray(affinity, dtype=np.float64), nan=0.0)
    n = len(z)
    if not 1 <= k <= n:
        raise ValueError(f"num-groups = {k}: must be between 1 and the {n} clients")
    if n <= exact_up_to:
        return canonical(exact_grouping(z, k)), "exact"
    best = refine(z, average_linkage((z + z.T) / 2, k), k)
    value = tag_objective(z, best)
    rng = np.random.default_rng([seed, 21])
    for _ in range(restarts):
        start = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # no group empty
        labels = refine(z, rng.permutation(start), k)
        score = tag_objective(z, labels)
        if score > value + 1e-12:
            best, value = labels, score
    return best, "clustering"


def adjusted_rand_index(a: np.ndarray | list[int], b: np.ndarray | list[int]) -> float:
    """Hubert and Arabie's adjusted Rand index of two labellings of the same items:
    (Σ C(nᵢⱼ,2) − E) / (½(Σ C(aᵢ,2) + Σ C(bⱼ,2)) − E), E = Σ C(aᵢ,2)·Σ C(bⱼ,2)/C(n,2);
    1 for identical partitions (also when both are trivial), about 0 for chance."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"labellings of different lengths: {len(a)} and {len(b)}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1, ib.max() + 1), dtype=np.int64)
    np.add.at(table, (ia, ib), 1)

    def pairs(x: np.ndarray) -> float:
        return float(np.sum(x * (x - 1)) / 2)

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([len(a)])) if len(a) > 1 else 0.0
    maximum = (rows + cols) / 2
    if maximum == expected:
        return 1.0
    return (index - expected) / (maximum - expected)
