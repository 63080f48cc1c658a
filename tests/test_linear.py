"""FedRep's linear-representation setting: data, exact heads, QR, distance, convergence."""

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid

from clients.app import app
from clients.routines import solve_head
from fedsim.data import DataError, load_dataset, make_split
from fedsim.history import RunWriter
from fedsim.models import build_model
from fedsim.server import run_rounds
from fedsim.validate import load_config
from strategies.aggregate import orthonormal_columns, principal_angle_distance

E = np.eye(3)


def test_principal_angle_distance_exact_numbers():
    truth = E[:, :2]
    assert principal_angle_distance(truth, truth) == pytest.approx(0.0, abs=1e-15)
    assert principal_angle_distance(E[:, [0, 2]], truth) == pytest.approx(1.0)
    tilted = np.stack([E[:, 0], (E[:, 1] + E[:, 2]) / np.sqrt(2)], axis=1)
    assert principal_angle_distance(tilted, truth) == pytest.approx(0.5)
    # any basis of the same subspace gives the same distance
    assert principal_angle_distance(tilted @ np.array([[2.0, 1.0], [0.0, 3.0]]), truth) == pytest.approx(0.5)


def test_orthonormal_columns_is_deterministic_qr():
    a = np.array([[3.0, 1.0], [4.0, 2.0], [0.0, 2.0]])
    q = orthonormal_columns(a)
    np.testing.assert_allclose(q.T @ q, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(q[:, 0], [0.6, 0.8, 0.0])  # first column = normalised input
    r = q.T @ a  # a = q r with r upper triangular, positive diagonal
    assert abs(r[1, 0]) < 1e-12 and (np.diag(r) > 0).all()


def test_linear_dataset_follows_the_model_and_defaults():
    config = load_config(None, ["dataset=linear-regression"])
    assert (config.num_clients, config.partitioner, config.head_solver, config.body_qr) == (
        100, "natural", "lstsq", True)
    assert load_config(None, ["dataset=linear-regression", "num-clients=7"]).num_clients == 7
    data = load_dataset(config)
    splits = make_split(config, data)
    assert data.x.shape == (100 * 110, 20) and len(splits) == 100
    assert all(len(s.train) == 10 and len(s.test) == 100 for s in splits)
    b = data.true_body
    np.testing.assert_allclose(b.T @ b, np.eye(2), atol=1e-12)
    # y lies in span(x B*) up to the noise: fit the client's head on (x B*) exactly
    s = splits[0]
    features = data.x[s.train] @ b
    w, *_ = np.linalg.lstsq(features, data.y[s.train], rcond=None)
    assert np.std(features @ w - data.y[s.train]) < 3e-3


def test_natural_split_must_match_num_clients():
    config = load_config(None, ["dataset=linear-regression", "num-clients=5"])
    data = load_dataset(config.replace(num_clients=6))
    with pytest.raises(DataError, match="has 6 natural clients but num-clients = 5"):
        make_split(config, data)
    with pytest.raises(DataError, match="no natural client split"):
        make_split(load_config(None, ["partitioner=natural"]), load_dataset(load_config()))


def test_solve_head_recovers_a_noise_free_head():
    config = load_config(None, ["dataset=linear-regression", "noise-std=0"])
    data = load_dataset(config)
    model = build_model(data, 0, 0)
    with torch.no_grad():
        model.body.weight.copy_(torch.from_numpy(data.true_body.T))
    s = make_split(config, data)[3]
    x, y = torch.from_numpy(data.x[s.train]), torch.from_numpy(data.y[s.train])
    solve_head(model, x, y)
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(model(x).squeeze(-1), y).item() < 1e-10


def run_linear(tmp_path, strategy, rounds):
    config = load_config(None, ["dataset=linear-regression", f"strategy={strategy}",
                                f"num-rounds={rounds}"])
    writer = RunWriter(tmp_path / strategy, config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, writer, 2)
    return writer.rows


def test_fedrep_recovers_the_representation_geometrically_and_fedavg_does_not(tmp_path):
    fedrep = [r["distance"] for r in run_linear(tmp_path, "fedrep", 25)]
    assert fedrep[-1] <= 1e-5
    ratios = [b / a for a, b in zip(fedrep[4:12], fedrep[5:13])]
    assert max(ratios) < 0.5  # a straight line on the log plot: contraction every round
    fedavg = [r["distance"] for r in run_linear(tmp_path, "fedavg", 25)]
    assert min(fedavg) > 0.1
    rows = run_linear(tmp_path, "fedrep", 1)
    assert rows[0]["accuracy"] is None and rows[0]["loss"] > 0 and len(rows[0]["clients_loss"]) == 100
