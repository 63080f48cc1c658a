"""The eight personalized-FL baselines of issue 17: exact maths on tiny models, and the
defining behaviour of each on the real apps in process."""

import math

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid, cut_and_resume
from torch import nn

from clients import engine, specs
from clients.apfl import MixtureModel, train_apfl
from clients.app import app
from clients.fedala import ALAModel, aggregate_locally, keep_local, top_parameters
from clients.fedproto import class_means, prototype_loss, prototype_scores
from clients.fedrod import RoDModel, balanced_softmax_loss, train_fedrod
from clients.perfedavg import adapt_one_step, meta_step
from clients.personal import personal_arrays
from clients.pfedme import train_pfedme
from clients.routines import DittoModel
from fedsim.algorithms import ALGORITHMS, client_model
from fedsim.checkpoint import load_checkpoint
from fedsim.config import Config, ConfigError
from fedsim.data import load_dataset
from fedsim.history import RunWriter, read_run
from fedsim.models import SplitModel, build_model, mlp
from fedsim.server import run_rounds
from strategies.fedbn import batchnorm_entries
from strategies.fedproto import average_prototypes
from strategies.pfedme import beta_mix

NEW = ["fedprox", "fedbn", "pfedme", "perfedavg", "apfl", "fedrod", "fedala", "fedproto"]


def run(tmp_path, strategy, nodes=2, **changes):
    settings = dict(num_rounds=2, num_clients=4, fraction_train=1.0, local_epochs=1)
    config = Config(strategy=strategy, **{**settings, **changes})
    grid = InProcessGrid(app, nodes)
    writer = RunWriter(tmp_path / f"{strategy}-{len(list(tmp_path.iterdir()))}", config.to_dict())
    run_rounds(grid, config, writer, nodes)
    return grid, writer.rows


def timing_free(rows):
    return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]


def names_on_the_wire(grid):
    names = set()
    for msg in grid.sent + grid.replies:
        if "arrays" in msg.content:
            names |= set(msg.content["arrays"].keys())
    return names


def personal_state(grid):
    return {k: a for ctx in grid.contexts.values() for k, a in personal_arrays(ctx).items()}


def scalar_model(weight):
    """x ↦ w·x, one weight, no bias (regression: the loss is the mean squared error)."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(weight)
    return model


def column(*values):
    return torch.tensor(values).unsqueeze(1)


# --- every new algorithm ------------------------------------------------------------


@pytest.mark.parametrize("strategy", NEW)
def test_every_new_algorithm_runs_and_evaluates(tmp_path, strategy):
    _, rows = run(tmp_path, strategy)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["clients"]) == 4 for r in rows)
    assert all(math.isfinite(r["train_loss"]) for r in rows)


def test_fedprox_and_fedbn_vectorize_the_others_run_client_by_client():
    data = load_dataset(Config())
    for strategy in NEW:
        config = Config(strategy=strategy)
        paths = engine.paths(client_model(config, data), ALGORITHMS[strategy].client, config)
        expected = "vectorized" if strategy in ("fedprox", "fedbn") else "loop"
        assert {paths[k] for k in paths if k != "evaluate"} == {expected}, strategy


@pytest.mark.parametrize("overrides, message", [
    (dict(fedprox_mu=-0.1), "fedprox-mu = -0.1: must be >= 0"),
    (dict(pfedme_lambda=0.0), "pfedme-lambda = 0.0: must be > 0"),
    (dict(pfedme_k=0), "pfedme-k = 0: must be >= 1"),
    (dict(pfedme_lr=-1.0), "pfedme-lr = -1.0: must be > 0"),
    (dict(pfedme_beta=0.0), "pfedme-beta = 0.0: must be > 0"),
    (dict(perfedavg_alpha=0.0), "perfedavg-alpha = 0.0: must be > 0"),
    (dict(perfedavg_beta=-1.0), "perfedavg-beta = -1.0: must be > 0"),
    (dict(perfedavg_variant="so"), "perfedavg-variant = 'so' is unknown"),
    (dict(apfl_alpha=1.5), "apfl-alpha = 1.5: must be in [0, 1]"),
    (dict(fedala_eta=0.0), "fedala-eta = 0.0: must be > 0"),
    (dict(fedala_layers=0), "fedala-layers = 0: must be >= 1"),
    (dict(fedala_sample=0.0), "fedala-sample = 0.0: must be in (0, 1]"),
    (dict(fedproto_lambda=-2.0), "fedproto-lambda = -2.0: must be >= 0"),
])
def test_bad_baseline_settings_are_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        Config(**overrides).check()
    assert message in str(err.value)


# --- FedProx ------------------------------------------------------------------------


def test_fedprox_with_mu_zero_is_fedavg(tmp_path):
    _, avg = run(tmp_path, "fedavg", num_rounds=3)
    _, prox = run(tmp_path, "fedprox", num_rounds=3, fedprox_mu=0.0)
    assert timing_free(prox) == timing_free(avg)


@pytest.mark.parametrize("path", [engine.LOOP, engine.VECTORIZED])
def test_fedprox_mu_keeps_the_local_model_near_the_received_one(path):
    torch.manual_seed(0)
    model = mlp(6, 8, 3)
    received = {k: v.detach().clone() for k, v in model.state_dict().items()}
    xs = [torch.randn(30, 6)]
    ys = [torch.randint(0, 3, (30,))]
    distances = []
    for mu in (0.0, 0.1, 1.0):
        states = {k: v.unsqueeze(0).clone() for k, v in received.items()}
        config = Config(fedprox_mu=mu, local_epochs=5, lr=0.1)
        engine.train_cohort(model, specs.FEDPROX.train, states, xs, ys, config,
                            [torch.Generator().manual_seed(1)], path)
        distances.append(sum(((states[k][0] - received[k]) ** 2).sum().item() for k in received))
    assert distances[0] > distances[1] > distances[2] > 0


# --- FedBN --------------------------------------------------------------------------


def test_batchnorm_entries_are_every_bn_parameter_and_statistic():
    inner = nn.Sequential(nn.Linear(4, 2), nn.BatchNorm1d(2))
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), inner)
    assert batchnorm_entries(model) == {
        f"{m}.{n}" for m in ("1", "2.1")
        for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    assert batchnorm_entries(mlp(4, 8, 2)) == set()


def test_fedbn_without_batchnorm_is_fedavg(tmp_path):
    _, avg = run(tmp_path, "fedavg", num_rounds=3)
    _, bn = run(tmp_path, "fedbn", num_rounds=3)
    assert timing_free(bn) == timing_free(avg)


def test_fedbn_keeps_batchnorm_on_the_clients(tmp_path):
    grid, rows = run(tmp_path, "fedbn", num_rounds=1, dataset="digit5-synth", synth_per_class=6,
                     partitioner="domain", num_clients=5, model="cnn32bn", batch_size=8)
    data = load_dataset(Config(dataset="digit5-synth", synth_per_class=6))
    bn = batchnorm_entries(build_model(data, 128, 0, "cnn32bn"))
    wire = names_on_the_wire(grid)
    assert wire and not wire & bn and any(n.startswith("body.0.") for n in wire)
    kept = personal_state(grid)
    assert {k.partition("/")[2] for k in kept} == bn
    for name in ("body.1.running_mean", "body.1.weight"):
        assert not np.array_equal(kept[f"0/{name}"], kept[f"1/{name}"])


# --- FedProto -----------------------------------------------------------------------


def test_average_prototypes_is_the_count_weighted_mean_per_class():
    p1 = np.array([[1.0, 2.0], [0.0, 0.0], [4.0, 4.0]], dtype=np.float32)
    p2 = np.array([[4.0, 8.0], [3.0, 1.0], [0.0, 0.0]], dtype=np.float32)
    mean, total = average_prototypes([p1, p2], [np.array([1.0, 0, 2]), np.array([2.0, 5, 0])])
    np.testing.assert_allclose(mean, [[3.0, 6.0], [3.0, 1.0], [4.0, 4.0]])
    np.testing.assert_array_equal(total, [3.0, 5.0, 2.0])
    mean, total = average_prototypes([p1], [np.array([0.0, 0, 0])])
    assert not mean.any() and not total.any()


def test_prototype_maths_on_small_numbers():
    features = torch.tensor([[1.0, 1.0], [0.0, 2.0], [3.0, 3.0]])
    y = torch.tensor([0, 2, 0])
    means, counts = class_means(features, y, 3)
    assert means.tolist() == [[2.0, 2.0], [0.0, 0.0], [0.0, 2.0]] and counts.tolist() == [2.0, 0.0, 1.0]
    prototypes = torch.tensor([[1.0, 0.0], [9.0, 9.0], [0.0, 0.0]])
    have = torch.tensor([3.0, 0.0, 1.0])
    scores = prototype_scores(features, prototypes, have)
    assert scores[0].tolist() == [-0.5, -1e4, -1.0]  # mean squared distances; class 1 has none
    # loss: sample 0 -> p0: (0² + 1²); sample 1 -> p2: (0² + 2²); sample 2 -> p0: (2² + 3²); / 6
    assert prototype_loss(features, y, prototypes, have).item() == pytest.approx((1 + 4 + 13) / 6)
    only_class_2 = torch.tensor([0.0, 0.0, 1.0])
    assert prototype_loss(features, y, prototypes, only_class_2).item() == pytest.approx(4 / 6)


def test_fedproto_exchanges_only_prototypes_averaged_by_class_counts(tmp_path):
    grid, _ = run(tmp_path, "fedproto")
    assert names_on_the_wire(grid) == {"prototypes", "prototype_counts"}
    assert {k.partition("/")[2].partition(".")[0] for k in personal_state(grid)} == {"net"}
    first = [r for r in grid.replies if "prototypes" in r.content.get("arrays", {})][:2]  # round 1, 2 nodes
    protos = np.concatenate([r.content["arrays"]["prototypes"].numpy() for r in first])
    counts = np.concatenate([r.content["arrays"]["prototype_counts"].numpy() for r in first])
    assert counts.sum() == sum(n for r in first for n in r.content["metrics"]["client-examples"])
    round2 = next(m for m in grid.sent if m.metadata.message_type == "train"
                  and int(m.content["config"]["server-round"]) == 2)
    sent = round2.content["arrays"]
    total = counts.sum(0)
    expected = (counts[:, :, None] * protos).sum(0) / np.maximum(total, 1)[:, None]
    assert (total == 0).any() and not expected[total == 0].any()  # classes no client holds
    np.testing.assert_allclose(sent["prototypes"].numpy(), expected, rtol=1e-5)
    np.testing.assert_array_equal(sent["prototype_counts"].numpy(), counts.sum(0))


# --- APFL ---------------------------------------------------------------------------


def test_apfl_with_alpha_zero_evaluates_exactly_the_global_model(tmp_path):
    _, avg = run(tmp_path, "fedavg", num_rounds=3, vectorize="off")
    _, apfl = run(tmp_path, "apfl", num_rounds=3, apfl_alpha=0.0, apfl_adaptive=False)
    for a, b in zip(avg, apfl):
        assert (a["accuracy"], a["loss"], a["clients"]) == (b["accuracy"], b["loss"], b["clients"])
    shared, personal = mlp(4, 8, 3), mlp(4, 8, 3)
    x = torch.randn(5, 4)
    assert torch.equal(MixtureModel(shared, personal, 0.0)(x), shared(x))


def test_apfl_one_step_by_hand():
    # w = 1, v = 3, α = 0.5, one sample x = 1, y = 0: v̄ = 2, f(v̄) = v̄², ∇f(v̄) = 4
    model = MixtureModel(scalar_model(1.0), scalar_model(3.0), 0.5)
    config = Config(lr=0.01, momentum=0.0, weight_decay=0.0, batch_size=10, local_epochs=1)
    loss = train_apfl(model, column(1.0, 1.0), torch.tensor([0.0, 0.0]), config, torch.Generator())
    assert loss == pytest.approx(4.0)
    assert model.shared.weight.item() == pytest.approx(0.98)  # ∇f(w) = 2w = 2
    assert model.personal.weight.item() == pytest.approx(2.98)  # α∇f(v̄) = 2
    assert model.alpha.item() == pytest.approx(0.42)  # ∇_α f(v̄) = ⟨v − w, ∇f(v̄)⟩ = 8


# --- pFedMe -------------------------------------------------------------------------


@pytest.mark.parametrize("k, theta, w", [(1, 1.25, 0.6125), (2, 0.5, 0.5)])
def test_pfedme_one_batch_by_hand(k, theta, w):
    # w = θ = 0.5, x = (1, 2), y = (2, 4): ∇f(θ) = mean(2x(θx − y)) = −7.5 at θ = 0.5
    # K = 1: θ = 0.5 − 0.1(−7.5) = 1.25; w = 0.5 − 0.01·15·(0.5 − 1.25) = 0.6125
    # K = 2: ∇f(1.25) = −3.75, θ = 1.25 − 0.1(−3.75 + 15·0.75) = 0.5; w unchanged
    model = DittoModel(scalar_model(0.5), scalar_model(-7.0))
    config = Config(pfedme_k=k, pfedme_lr=0.1, pfedme_lambda=15.0, lr=0.01, weight_decay=0.0, batch_size=10)
    train_pfedme(model, column(1.0, 2.0), torch.tensor([2.0, 4.0]), config, torch.Generator())
    assert model.personal.weight.item() == pytest.approx(theta)
    assert model.shared.weight.item() == pytest.approx(w)


def test_pfedme_server_mixes_with_beta():
    previous = {"a": np.array([1.0, 2.0], dtype=np.float32)}
    averaged = {"a": np.array([3.0, 0.0], dtype=np.float32)}
    np.testing.assert_allclose(beta_mix(previous, averaged, 2.0)["a"], [5.0, -2.0])
    np.testing.assert_allclose(beta_mix(previous, averaged, 0.5)["a"], [2.0, 1.0])
    assert beta_mix(previous, averaged, 1.0) is averaged


# --- Per-FedAvg ---------------------------------------------------------------------


@pytest.mark.parametrize("variant, expected", [("fo", 0.535), ("hf", 0.507)])
def test_perfedavg_meta_step_by_hand(variant, expected):
    # D: x = (1, 2), y = (2, 4): ∇f(0.5) = −7.5, w̃ = 0.5 + 0.1·7.5 = 1.25
    # D': x = 1, y = 3: ∇f(w̃) = 2(1.25 − 3) = −3.5; FO: w = 0.5 − 0.01·(−3.5) = 0.535
    # D'': x = 2, y = 0: f = 4w², ∇²f = 8; HF: w = 0.5 − 0.01·(−3.5 − 0.1·8·(−3.5)) = 0.507
    model = scalar_model(0.5)
    batches = [(column(1.0, 2.0), torch.tensor([2.0, 4.0])), (column(1.0), torch.tensor([3.0])),
               (column(2.0), torch.tensor([0.0]))]
    loss = meta_step(model, batches[:3 if variant == "hf" else 2], 0.1, 0.01, variant)
    assert loss == pytest.approx(1.75 ** 2)
    assert model.weight.item() == pytest.approx(expected)


def test_perfedavg_adapts_by_one_step_before_evaluation():
    model = scalar_model(0.5)
    config = Config(perfedavg_alpha=0.1, batch_size=10)
    adapt_one_step(model, column(1.0, 2.0), torch.tensor([2.0, 4.0]), config, torch.Generator())
    assert model.weight.item() == pytest.approx(1.25)


# --- FedRoD -------------------------------------------------------------------------


def test_balanced_softmax_shifts_logits_by_log_counts():
    logits, counts = torch.zeros(1, 3), torch.tensor([1.0, 2.0, 0.0])
    assert balanced_softmax_loss(logits, torch.tensor([1]), counts).item() == pytest.approx(-math.log(2 / 3))


def test_fedrod_one_batch_by_hand():
    # heads at zero, x = 1, labels (0, 1, 1, 1): counts (1, 3) make the balanced softmax
    # (1/4, 3/4) match the labels, so the generic head gets no gradient; the personal head
    # sees softmax (1/2, 1/2): gradient mean(p − onehot)·x = (1/4, −1/4)
    head = nn.Linear(1, 2, bias=False)
    nn.init.zeros_(head.weight)
    model = RoDModel(SplitModel(nn.Identity(), head))
    config = Config(lr=0.1, momentum=0.0, weight_decay=0.0, batch_size=10)
    loss = train_fedrod(model, torch.ones(4, 1), torch.tensor([0, 1, 1, 1]), config, torch.Generator())
    assert loss == pytest.approx(math.log(2))
    assert model.head.weight.abs().max().item() < 1e-7
    assert model.personal_head.weight.squeeze(1).tolist() == pytest.approx([-0.025, 0.025])
    assert model(torch.ones(1, 1))[0].tolist() == pytest.approx([-0.025, 0.025])


# --- FedALA -------------------------------------------------------------------------


def ala_pair(received, previous, learned):
    """body·head·x models: the received (global) pair and the client's previous local pair."""
    shared = SplitModel(scalar_model(received[0]), scalar_model(received[1]))
    local = SplitModel(scalar_model(previous[0]), scalar_model(previous[1]))
    model = ALAModel(shared, local, layers=1)
    model.fitted.fill_(1.0)
    model.learned.fill_(float(learned))
    return model


def test_fedala_one_pass_by_hand():
    # received body 1, head 1; previous body 0.3, head 3. The body takes the received
    # value; the head starts at 3 + (1 − 3)·W, W = 1, i.e. 1; f(h) = (h − 2)², ∇f = −2;
    # W ← clip(1 − η·(−2)·(1 − 3)) = 1 − 4η = 0.6 (η = 0.1); head = 3 − 2·0.6 = 1.8
    model = ala_pair((1.0, 1.0), (0.3, 3.0), learned=True)
    config = Config(fedala_eta=0.1, fedala_sample=1.0, batch_size=10)
    aggregate_locally(model, column(1.0, 1.0), torch.tensor([2.0, 2.0]), config, torch.Generator())
    assert model.weights.p0.item() == pytest.approx(0.6)
    assert (model.shared.body.weight.item(), model.shared.head.weight.item()) == pytest.approx((1.0, 1.8))


def test_fedala_first_aggregation_trains_the_weights_until_the_loss_settles():
    # W ← W + 0.4(1 − 2W) per pass: the fixed point W = 0.5 puts the head at 2 (loss 0)
    model = ala_pair((1.0, 1.0), (0.3, 3.0), learned=False)
    config = Config(fedala_eta=0.1, fedala_sample=1.0, batch_size=10)
    aggregate_locally(model, column(1.0, 1.0), torch.tensor([2.0, 2.0]), config, torch.Generator())
    assert model.weights.p0.item() == pytest.approx(0.5, abs=1e-4)
    assert model.shared.head.weight.item() == pytest.approx(2.0, abs=1e-3) and bool(model.learned)


def test_fedala_without_a_local_model_keeps_the_received_one_then_remembers_the_trained_one():
    model = ala_pair((1.0, 1.0), (0.3, 3.0), learned=False)
    model.fitted.fill_(0.0)
    config = Config(fedala_sample=1.0)
    aggregate_locally(model, column(1.0, 1.0), torch.tensor([2.0, 2.0]), config, torch.Generator())
    assert model.shared.head.weight.item() == 1.0 and not bool(model.learned)
    keep_local(model, None, None, config, None)
    assert model.local.head.weight.item() == 1.0 and bool(model.fitted)


def test_fedala_layers_name_the_top_parameters():
    model = mlp(4, 8, 3)
    assert top_parameters(model, 1) == ("head.weight", "head.bias")
    assert top_parameters(model, 2) == ("body.3.weight", "body.3.bias", "head.weight", "head.bias")
    with pytest.raises(ValueError, match=r"fedala-layers = 4: must be in \[1, 3\]"):
        top_parameters(model, 4)


# --- personal state across rounds and checkpoints -------------------------------------

PERSONAL = {  # what each algorithm keeps on the client (MLP model: no BatchNorm for fedbn)
    "fedprox": set(), "fedbn": set(), "perfedavg": set(),
    "pfedme": {"personal"}, "apfl": {"personal", "alpha"}, "fedrod": {"personal_head"},
    "fedala": {"local", "weights", "fitted", "learned"}, "fedproto": {"net"},
}


@pytest.mark.parametrize("strategy", NEW)
def test_personal_state_persists_across_rounds_and_through_resume(tmp_path, strategy):
    config = Config(strategy=strategy, num_rounds=4, num_clients=6, fraction_train=0.5, checkpoint_every=2,
                    local_epochs=1)
    whole = RunWriter(tmp_path / "whole", config.to_dict())
    grid = InProcessGrid(app, 2)
    run_rounds(grid, config, whole, 2)
    kept = personal_state(grid)
    assert {k.partition("/")[2].partition(".")[0] for k in kept} == PERSONAL[strategy]
    checkpoint = load_checkpoint(tmp_path / "whole")
    assert checkpoint.round == 4 and set(checkpoint.clients) == set(kept)
    initial = client_model(config, load_dataset(config)).state_dict()
    trained = {k for k in kept if not np.array_equal(kept[k], initial[k.partition("/")[2]].numpy())}
    assert bool(trained) == bool(PERSONAL[strategy])  # personal parts were trained and kept

    cut_and_resume(tmp_path / "cut", config)
    assert timing_free(read_run(tmp_path / "cut")[1]) == timing_free(whole.rows)


def test_fedala_state_moves_from_no_local_model_to_learned_weights(tmp_path):
    flags = []
    for rounds in (1, 2):
        grid, _ = run(tmp_path, "fedala", num_rounds=rounds)
        kept = personal_state(grid)
        flags.append((float(kept["0/fitted"]), float(kept["0/learned"])))
    assert flags == [(1.0, 0.0), (1.0, 1.0)]
