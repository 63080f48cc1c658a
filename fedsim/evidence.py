"""LogME (``fedsim.logme``): the log maximum evidence of a Bayesian linear model on fixed features.

You, Liu, Wang, Long, ICML 2021 ("LogME: Practical Assessment of Pre-trained Models for
Transfer Learning"), computed by the fixed-point iteration of the JMLR 2022 follow-up
("Ranking and Tuning Pre-trained Models"), which is the reference code's default
(thuml/LogME, ``LogME._fit_fixed_point``). Pure numpy, float64.

For one target column y (N values) and features F (N × D), the model is
y = F·m + ε, m ~ N(0, α⁻¹I), ε ~ N(0, β⁻¹I); with σᵢ the squared singular values of F
and xᵢ = uᵢᵀy (uᵢ its left singular vectors), the evidence maximised over α, β is

    L/N = [D/2·log α + N/2·log β − ½·Σⱼ₌₁..D log(α + β·σⱼ) − β/2·‖y − F·m‖² − α/2·‖m‖²
           − N/2·log 2π] / N,

with σⱼ = 0 for the D − k directions F does not span (k = min(N, D) singular values).
With fewer samples than features (N < D) the reference sums the log-determinant over
its k = N singular values only, which drops −(D − k)/2·log α: here the sum runs over all
D eigenvalues of FᵀF, as the maths says. With N > D both agree (the reference keeps the
numerically tiny singular values of rank-deficient features, which adds the same terms).
"""

from __future__ import annotations

import numpy as np

MAX_ITERATIONS = 11  # the reference: "should converge after at most 10 steps"
TOLERANCE = 1e-3  # stop when |Δ(α/β)| / (α/β) ≤ this
EPSILON = 1e-5  # added to the denominators of the α and β updates


def logme(features: np.ndarray, labels: np.ndarray, regression: bool = False) -> float:
    """LogME of ``features`` (N × D) for ``labels``: the mean over targets of the
    maximum evidence per sample. Classification (``labels`` N integers): one one-vs-rest
    0/1 target per class *present in* ``labels`` (the reference takes every class up to
    the largest label, so a class a client lacks would count as a perfectly fitted
    all-zero target). Regression (``labels`` N or N × C): one target per column."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise ValueError(f"features must be a non-empty N x D matrix, got shape {f.shape}")
    y = np.asarray(labels)
    if y.shape[0] != f.shape[0]:
        raise ValueError(f"{f.shape[0]} feature rows but {y.shape[0]} labels")
    if regression:
        targets = y.astype(np.float64).reshape(len(y), -1)
    else:
        classes = np.unique(y)
        targets = (y.reshape(-1, 1) == classes.reshape(1, -1)).astype(np.float64)
    _, s, vh = np.linalg.svd(f, full_matrices=False)  # k = min(N, D) values
    u = f @ vh.T  # = U·diag(s); divided below where s > 0
    kept = s > 1e-10 * max(1.0, float(s[0]) if len(s) else 1.0)
    u = u[:, kept] / s[kept]
    sigma = s[kept] ** 2
    return float(np.mean([evidence(u, sigma, f.shape[1], targets[:, j]) for j in range(targets.shape[1])]))


def evidence(u: np.ndarray, sigma: np.ndarray, dim: int, y: np.ndarray) -> float:
    """The maximum evidence per sample of one target ``y`` (N values) given the left
    singular vectors ``u`` (N × r) of the features for their non-zero squared singular
    values ``sigma`` (r), and the feature dimension ``dim`` (D ≥ r). The other D − r
    eigenvalues of FᵀF are 0: they add nothing to γ and (D − r)·log α to log|A|."""
    n = len(y)
    x2 = (u.T @ y) ** 2
    rest = float(y @ y - x2.sum())  # ‖y‖² outside the span of the features
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITERATIONS):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())  # ‖m‖²
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + rest  # ‖y − F·m‖²
        alpha = gamma / (m2 + EPSILON)
        beta = (n - gamma) / (res2 + EPSILON)
        if abs(alpha / beta - t) / t <= TOLERANCE:
            break
    log_det = float(np.log(alpha + beta * sigma).sum()) + (dim - len(sigma)) * np.log(alpha)
    total = (dim / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - beta / 2 * res2
             - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(total / n)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equal-length sequences (ties get their mean
    rank); nan with fewer than two values or a constant sequence."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two sequences of one length, got shapes {a.shape} and {b.shape}")
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra @ ra) * (rb @ rb))
    return float(ra @ rb / norm) if norm > 0 else float("nan")


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks
