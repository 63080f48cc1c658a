"""LogME (fedsim.logme): the reference's numbers, the N < D maths, and the runs' metrics."""

import json

import numpy as np
import pytest
from inprocess import InProcessGrid

from clients.app import app
from fedsim import logme
from fedsim.config import Config
from fedsim.evidence import spearman
from fedsim.history import EmptyRun, RunWriter
from fedsim.plot import plot_runs
from fedsim.server import run_rounds


def test_matches_the_reference_code_on_the_issues_three_examples():
    # computed with thuml/LogME's LogME.py (fixed-point fit, numpy 2.4.6)
    f = np.random.default_rng(0).normal(size=(50, 8))
    y = np.arange(50) % 3
    assert logme(f, y) == pytest.approx(-0.8668505105074101, abs=1e-9)
    rng = np.random.default_rng(1)
    f = rng.normal(size=(40, 5))
    target = f @ [1, -2, 0.5, 0, 3] + 0.1 * rng.normal(size=40)
    assert logme(f, target, regression=True) == pytest.approx(0.4201328570307089, abs=1e-9)
    aligned = np.eye(3)[y] + 0.1 * np.random.default_rng(0).normal(size=(50, 3))
    assert logme(aligned, y) == pytest.approx(0.761455524480433, abs=1e-9)


def test_regression_columns_are_averaged():
    rng = np.random.default_rng(2)
    f = rng.normal(size=(30, 4))
    a, b = f @ [1, 0, 0, 1] + 0.3 * rng.normal(size=30), rng.normal(size=30)
    both = logme(f, np.stack([a, b], axis=1), regression=True)
    assert both == pytest.approx((logme(f, a, regression=True) + logme(f, b, regression=True)) / 2, abs=1e-12)


def test_fewer_samples_than_features_uses_every_eigenvalue():
    # Exact maths: a feature that is zero on every sample carries no information, so its
    # weight's prior integrates out and the evidence does not change; likewise a rotation
    # of the feature space. The reference drops -(D-k)/2 log(alpha) for k < D and fails both.
    rng = np.random.default_rng(3)
    f = rng.normal(size=(6, 10))  # N = 6 < D = 10
    y = np.arange(6) % 2
    padded = np.concatenate([f, np.zeros((6, 5))], axis=1)
    assert logme(padded, y) == pytest.approx(logme(f, y), abs=1e-12)
    rotation, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    assert logme(f @ rotation, y) == pytest.approx(logme(f, y), abs=1e-10)
    # ... and F = U S Vᵀ carries exactly the information of U S (N x N, k = D: the reference's case)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    assert logme(u * s, y) == pytest.approx(logme(f, y), abs=1e-10)
    # with N > D: a zero column changes nothing either
    g = rng.normal(size=(40, 3))
    y40 = np.arange(40) % 4
    assert logme(np.concatenate([g, g[:, :1] * 0], axis=1), y40) == pytest.approx(logme(g, y40), abs=1e-12)


def brute_force(f, y):
    """The evidence of one 0/1 target from D x D matrices (A = αI + βFᵀF, m = βA⁻¹Fᵀy,
    log|A| from slogdet), the same fixed-point updates: an independent check of the maths."""
    n, d = f.shape
    eig = np.linalg.eigvalsh(f.T @ f).clip(min=0)
    alpha, beta = 1.0, 1.0
    for _ in range(11):
        t = alpha / beta
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        gamma = (eig / (eig + t)).sum()
        m2, res2 = m @ m, ((y - f @ m) ** 2).sum()
        alpha, beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    logdet = np.linalg.slogdet(alpha * np.eye(d) + beta * f.T @ f)[1]
    return (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - logdet / 2 - beta / 2 * res2 - alpha / 2 * m2
            - n / 2 * np.log(2 * np.pi)) / n


def test_fewer_samples_than_features_matches_the_d_by_d_maths():
    rng = np.random.default_rng(5)
    f = np.maximum(rng.normal(size=(12, 30)), 0)  # N = 12 < D = 30
    y = np.arange(12) % 2
    by_class = [brute_force(f, (y == c).astype(float)) for c in (0, 1)]  # one-vs-rest, then the mean
    assert logme(f, y) == pytest.approx(np.mean(by_class), abs=1e-9)
    g = rng.normal(size=(40, 6))  # and N > D, where the reference is right
    y = np.arange(40) % 3
    by_class = [brute_force(g, (y == c).astype(float)) for c in (0, 1, 2)]
    assert logme(g, y) == pytest.approx(np.mean(by_class), abs=1e-9)


def test_classes_are_those_present():
    # a client holding classes 3 and 7 scores two one-vs-rest targets, not eight
    rng = np.random.default_rng(4)
    f = rng.normal(size=(20, 5))
    y = np.where(np.arange(20) % 2 == 0, 3, 7)
    assert logme(f, y) == pytest.approx(logme(f, (y == 7).astype(int)), abs=1e-12)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="labels"):
        logme(np.zeros((4, 2)), np.zeros(3))
    with pytest.raises(ValueError, match="N x D"):
        logme(np.zeros(4), np.zeros(4))


def test_spearman_hand_computed():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks a = (1, 2, 3), b = (1, 3, 2): 1 - 6·Σd²/(n(n²-1)) = 1 - 6·2/24 = 0.5
    assert spearman([1, 2, 3], [5, 9, 7]) == pytest.approx(0.5)
    # ties share their mean rank: a ranks (1.5, 1.5, 3), b ranks (1, 2, 3) -> r = 0.866...
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(3) / 2)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_runs_report_logme_per_client_and_the_spearman_correlation(tmp_path):
    config = Config(num_rounds=2, num_clients=4, fraction_train=0.5, head_epochs=1, logme=True)
    writer = RunWriter(tmp_path / "run", config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, writer, 2)
    summary = writer.finish()
    for row in writer.rows:
        assert set(row["clients_logme"]) == {"0", "1", "2", "3"}
        values = list(row["clients_logme"].values())
        assert all(np.isfinite(values))
        assert min(values) <= row["logme"] <= max(values)
    last = writer.rows[-1]
    clients = list(last["clients_logme"])
    expected = spearman([last["clients_logme"][c] for c in clients], [last["clients"][c] for c in clients])
    assert summary["logme_spearman"] == pytest.approx(expected)
    assert summary["final_logme"] == last["logme"]
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["logme_spearman"] == summary["logme_spearman"]
    path = plot_runs([str(tmp_path / "run")], str(tmp_path / "logme.png"), metric="logme")
    assert path.stat().st_size > 0


def test_logme_off_adds_nothing(tmp_path):
    config = Config(num_rounds=1, num_clients=2, fraction_train=1.0, head_epochs=1)
    writer = RunWriter(tmp_path / "run", config.to_dict())
    run_rounds(InProcessGrid(app, 1), config, writer, 1)
    assert "logme" not in writer.rows[0] and "logme_spearman" not in writer.finish()
    with pytest.raises(EmptyRun, match="logme = true"):
        plot_runs([str(tmp_path / "run")], str(tmp_path / "logme.png"), metric="logme")
