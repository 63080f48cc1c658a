"""KD3A on the real apps in process: only weights move, labels stay, phases and switches."""

import json

import numpy as np
import pytest
import torch
from inprocess import InProcessGrid, cut_and_resume

from clients.app import _actor, app
from clients.personal import personal_arrays
from clients.routines import _sgd, kd3a_epochs, predict_in_train_mode
from fedsim.algorithms import client_model
from fedsim.checkpoint import load_checkpoint
from fedsim.config import Config, ConfigError
from fedsim.data import DataError, load_dataset, make_split
from fedsim.history import RunWriter, read_run
from fedsim.server import run_rounds
from fedsim.validate import load_config
from fedsim.wire import split_client_arrays

SETTING = ["dataset=digit5-synth", "partitioner=domain", "num-clients=5", "target-domain=usps",
           "synth-per-class=6", "num-rounds=2", "fraction-train=1.0", "batch-size=16"]


def run(tmp_path, *extra):
    config = load_config(None, [*SETTING, "strategy=kd3a", *extra])
    grid = InProcessGrid(app, 2)
    writer = RunWriter(tmp_path / f"kd3a-{len(list(tmp_path.iterdir()))}", config.to_dict())
    run_rounds(grid, config, writer, 2)
    return config, grid, writer.rows


def test_only_weights_cross_client_boundaries(tmp_path):
    config, grid, rows = run(tmp_path)
    data = load_dataset(config)
    names = set(client_model(config, data).state_dict())
    n_samples = min(len(s.train) for s in make_split(config, data))
    assert any(m.metadata.message_type == "train.distill" for m in grid.sent)
    for msg in grid.sent + grid.replies:
        for record in msg.content.values():
            if hasattr(record, "to_numpy_ndarrays"):  # ArrayRecord: model entries only
                assert {k.rpartition("/")[2] if "/" in k else k for k in record.keys()} <= names
            else:  # metrics and configs: scalars and per-client lists, nothing per sample
                for value in record.values():
                    assert not isinstance(value, list) or len(value) < n_samples
    # the target (last client) never trains on labels: its label tensor is all -1
    target = config.targets()[0]
    assert (_actor(config.to_json()).tensors(target)[1] == -1).all()
    assert all(target not in m.content["config"]["clients"]
               for m in grid.sent if m.metadata.message_type == "train")
    assert set(rows[-1]["source_weights"]) == {"0", "1", "2", "3"}
    assert rows[-1]["target_weight"] + sum(rows[-1]["source_weights"].values()) == pytest.approx(1.0)
    assert "source_accuracy" in rows[-1]


def test_batchnorm_statistics_stay_local_when_switched_off(tmp_path):
    _, grid, _ = run(tmp_path, "kd3a-bn=false")
    wire = {k.rpartition("/")[2] for m in grid.sent + grid.replies if "arrays" in m.content
            for k in m.content["arrays"].keys()}
    assert wire and not any(k.endswith(("running_mean", "running_var")) for k in wire)
    _, grid, _ = run(tmp_path)
    wire = {k.rpartition("/")[2] for m in grid.replies if "arrays" in m.content
            for k in m.content["arrays"].keys()}
    assert any(k.endswith("running_mean") for k in wire)


@pytest.mark.parametrize("rounds_per_epoch, steps", [(0.5, 8), (1.0, 4), (2.0, 2), (4.0, 1)])
def test_communication_rounds_set_the_local_steps(rounds_per_epoch, steps):
    config = Config(kd3a_rounds_per_epoch=rounds_per_epoch, batch_size=10)
    model = torch.nn.Linear(2, 2)
    calls = []

    def loss(batch):
        calls.append(len(batch))
        return model(torch.zeros(len(batch), 2)).sum()

    _sgd(model, model.parameters(), torch.zeros(40, 2), kd3a_epochs(config), config,
         torch.Generator().manual_seed(0), loss)
    assert len(calls) == steps and set(calls) == {10}


def test_kd3a_settings_are_validated():
    with pytest.raises(ConfigError, match="needs target-domain"):
        load_config(None, ["strategy=kd3a", "partitioner=domain", "dataset=digit5-synth"])
    with pytest.raises(ConfigError, match="needs partitioner = 'domain'"):
        load_config(None, ["target-domain=usps"])
    with pytest.raises(ConfigError, match="malicious-fraction = 1.5"):
        load_config(None, [*SETTING, "malicious-fraction=1.5"])
    with pytest.raises(ConfigError, match="target-clients = 5"):
        load_config(None, [*SETTING, "target-clients=5"])
    with pytest.raises(ConfigError, match="ids must be source clients 0..3"):
        load_config(None, [*SETTING, "malicious-sources=4"])
    with pytest.raises(ConfigError, match="kd3a-gate-end = 1.5"):
        load_config(None, [*SETTING, "kd3a-gate-end=1.5"])
    config = load_config(None, [*SETTING, "target-domain=cifar"])
    with pytest.raises(DataError, match="target-domain = 'cifar' is not a domain"):
        make_split(config, load_dataset(config))


def test_malicious_sources_are_corrupted_in_their_actor_only():
    config = load_config(None, [*SETTING, "malicious-sources=1"])
    actor = _actor(config.to_json())
    data, split = actor.data, actor.splits[1]
    np.testing.assert_array_equal(actor.tensors(1)[1].numpy(), (data.y[split.train] + 1) % 10)
    np.testing.assert_array_equal(actor.tensors(1)[3].numpy(), data.y[split.test])  # test untouched
    noisy = _actor(config.replace(malicious_mode="noise").to_json())
    assert not np.allclose(noisy.tensors(1)[0].numpy(), data.x[split.train])
    assert json.loads(config.to_json())["malicious-sources"] == "1"


def node_clients(grid):
    """node id -> the clients the server ever named in a message to it."""
    out = {}
    for msg in grid.sent:
        if "config" in msg.content:
            out.setdefault(msg.metadata.dst_node_id, set()).update(msg.content["config"]["clients"])
    return out


def test_heads_stay_personal_and_reach_targets_only_inside_a_distill_message(tmp_path):
    config, grid, rows = run(tmp_path)
    target = config.targets()[0]
    for msg in grid.sent + grid.replies:
        kind = msg.metadata.message_type
        for name, record in msg.content.items():
            if not hasattr(record, "to_numpy_ndarrays"):
                continue
            heads = [k for k in record.keys() if k.startswith("head.")]
            if name == "sources":  # the sources' full models, only in the target's distill message
                assert kind == "train.distill" and heads and target in msg.content["config"]["clients"]
            elif name == "personal":  # the sources' heads, only in their train replies
                assert kind == "train" and heads
            else:  # what the server sends, aggregates and gets back from targets: bodies only
                assert not heads, (kind, name)
    # the server never aggregated a head: every model it sent holds only body arrays
    for msg in grid.sent:
        if "arrays" in msg.content:
            assert all(k.startswith("body.") for k in msg.content["arrays"].keys())
    # a node holds the personal state of its own clients only (no source head is stored
    # on the target's node), the target's trained head and kept momentum among them
    initial = client_model(config, load_dataset(config)).state_dict()
    for node, clients in node_clients(grid).items():
        kept = personal_arrays(grid.contexts[node])
        assert {int(k.partition("/")[0]) for k in kept} <= clients
        if target in clients:
            head = kept[f"{target}/head.weight"]
            assert not np.array_equal(head, initial["head.weight"].numpy())
            assert f"{target}/momentum:head.weight" in kept
    assert "target_weights" in rows[-1] and rows[-1]["confident_fraction"] >= 0


def test_share_head_averages_whole_models(tmp_path):
    _, grid, _ = run(tmp_path, "kd3a-share-head=true")
    sent = {k for m in grid.sent if m.metadata.message_type == "train" for k in m.content["arrays"].keys()}
    assert "head.weight" in sent


def test_a_targets_head_persists_across_rounds_and_through_resume(tmp_path):
    config = load_config(None, [*SETTING, "strategy=kd3a", "num-rounds=4", "checkpoint-every=2"])
    whole = RunWriter(tmp_path / "whole", config.to_dict())
    run_rounds(InProcessGrid(app, 2), config, whole, 2)
    checkpoint = load_checkpoint(tmp_path / "whole")
    target = config.targets()[0]
    assert {f"{target}/head.weight", f"{target}/momentum:head.weight"} <= set(checkpoint.clients)

    cut_and_resume(tmp_path / "cut", config)  # resumed on another node layout
    def strip(rows):
        return [{k: v for k, v in r.items() if k != "round_seconds"} for r in rows]

    assert strip(read_run(tmp_path / "cut")[1]) == strip(whole.rows)


def test_kd3a_defaults_are_the_references_optimiser_and_yield_to_set_keys():
    config = load_config(None, [*SETTING[:-1], "strategy=kd3a"])
    assert (config.lr, config.momentum, config.weight_decay, config.lr_schedule, config.lr_min,
            config.keep_optimizer_state, config.batch_size) == (0.05, 0.9, 5e-4, "cosine", 0.001, True, 32)
    assert config.kd3a_mixup == 2.0 and config.kd3a_ema == 0.9
    config = load_config(None, [*SETTING, "strategy=kd3a", "lr=0.01", "lr-schedule=constant"])
    assert (config.lr, config.lr_schedule, config.batch_size) == (0.01, "constant", 16)
    assert load_config(None, SETTING).lr == Config().lr  # other strategies: untouched


def test_an_empty_vote_is_reported_once_as_a_warning_naming_the_gate(tmp_path):
    with pytest.warns(UserWarning, match="accepted no target sample.*gate 0.999") as caught:
        _, _, rows = run(tmp_path, "kd3a-gate-start=0.999", "kd3a-gate-end=0.999")
    assert len([w for w in caught if "accepted no target" in str(w.message)]) == 1
    assert all(r["confident_fraction"] == 0 and "vote accepted no target sample" in r["notice"] for r in rows)


def test_labeled_clients_fine_tune_a_personal_head_and_the_targets_evaluate_as_they_are(tmp_path):
    skewed = ["domain-split=shards", "classes-per-client=3", "num-clients=9", "kd3a-share-head=true",
              "lr-schedule=constant"]
    before, _, plain = run(tmp_path, *skewed)
    config, _, tuned = run(tmp_path, *skewed, "kd3a-finetune=true", "finetune-epochs=3")
    targets = [str(t) for t in config.targets()]
    for a, b in zip(plain, tuned):
        assert a["train_loss"] == b["train_loss"]  # fine-tuning is on a copy: training is untouched
        assert [a["clients"][t] for t in targets] == [b["clients"][t] for t in targets]
        assert a["accuracy"] == b["accuracy"]  # the targets' accuracy
    # the labeled clients evaluated with heads fine-tuned on their 3 classes
    assert tuned[-1]["source_accuracy"] > plain[-1]["source_accuracy"]
    assert "finetune" in _actor(config.to_json()).paths
    assert "finetune" not in _actor(before.to_json()).paths


def test_strategy_warnings_reach_the_user_of_a_simulation_and_flowers_do_not():
    import warnings

    from fedsim.simulation import own_warnings_only

    with warnings.catch_warnings(record=True) as caught, own_warnings_only():
        warnings.warn_explicit("vote accepted nothing", UserWarning, "kd3a.py", 1, module="strategies.kd3a")
        warnings.warn_explicit("my plugin", UserWarning, "mine.py", 1, module="my_strategy")
        warnings.warn_explicit("flower api", UserWarning, "x.py", 1, module="flwr.simulation.legacy")
        warnings.warn_explicit("ray api", DeprecationWarning, "y.py", 1, module="ray.util")
        warnings.warn_explicit("old numpy", DeprecationWarning, "z.py", 1, module="fedsim.data")
    assert [str(w.message) for w in caught] == ["vote accepted nothing", "my plugin"]


def test_cli_shows_a_warning_as_one_fedsim_line(capsys):
    from fedsim.cli import _show_warning

    _show_warning(UserWarning("kd3a: something"), UserWarning, "f.py", 3)
    assert capsys.readouterr().err == "fedsim: warning: kd3a: something\n"


def test_kd3a_warns_before_the_run_when_label_skewed_sources_keep_personal_heads():
    from strategies.kd3a import KD3A

    skewed = [*SETTING[:2], "target-domain=mnistm", "num-clients=22", "target-clients=2",
              "domain-split=shards", "classes-per-client=3", "strategy=kd3a", "synth-per-class=10"]
    config = load_config(None, skewed)
    data = load_dataset(config)
    labels = [data.y[s.train] for s in make_split(config, data)]
    advice = KD3A.advice(config, labels)
    assert len(advice) == 1 and "hold 3.0 of 10 classes" in advice[0] and "kd3a-share-head" in advice[0]
    assert KD3A.advice(load_config(None, [*skewed, "kd3a-share-head=true"]), labels) == []
    iid = load_config(None, [*SETTING, "strategy=kd3a"])
    data = load_dataset(iid)
    assert KD3A.advice(iid, [data.y[s.train] for s in make_split(iid, data)]) == []


def test_many_clients_per_domain_and_several_targets(tmp_path):
    config, grid, rows = run(tmp_path, "num-clients=10", "target-clients=2", "domain-split=shards",
                             "classes-per-client=3", "kd3a-exact-up-to=4", "kd3a-permutations=8")
    data = load_dataset(config)
    splits = make_split(config, data)
    target_domain = data.domain_names.index("usps")
    assert config.targets() == [8, 9]
    for client, split in enumerate(splits):
        domains = set(data.domains[split.train].tolist())
        assert (domains == {target_domain}) == (client in (8, 9))
        if client < 8:
            assert len(set(data.y[split.train].tolist())) == 3
    assert set(rows[-1]["target_weights"]) == {"8", "9"} and len(rows[-1]["source_weights"]) == 8
    total = sum(rows[-1]["target_weights"].values()) + sum(rows[-1]["source_weights"].values())
    assert total == pytest.approx(1.0)
    distill = [m for m in grid.sent if m.metadata.message_type == "train.distill"]
    assert sorted(c for m in distill for c in m.content["config"]["clients"]) == [8, 8, 9, 9]


def test_malicious_fraction_shifts_that_share_of_the_labels():
    config = load_config(None, [*SETTING, "malicious-sources=1", "malicious-fraction=0.5"])
    actor = _actor(config.to_json())
    clean = actor.data.y[actor.splits[1].train]
    shifted = actor.tensors(1)[1].numpy() != clean
    assert shifted.sum() == round(0.5 * len(clean))
    np.testing.assert_array_equal(actor.tensors(1)[1].numpy()[shifted], (clean[shifted] + 1) % 10)


def test_the_vote_normalises_with_the_target_batches_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    x = 5 + torch.randn(8, 3)
    expected = torch.softmax(model.train()(x), -1).double()  # one batch: train-mode BatchNorm
    model.load_state_dict({k: v for k, v in model.state_dict().items()} | {
        "1.running_mean": torch.zeros(4), "1.num_batches_tracked": torch.tensor(0)})
    probs = predict_in_train_mode(model, x, 8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(probs, expected)
    assert model[1].running_mean.abs().sum() > 0  # moved toward the target's statistics


def test_the_server_averages_bodies_with_the_sources_target_adapted_statistics(tmp_path):
    config, grid, rows = run(tmp_path, "num-rounds=1", "eval-every=1")
    trains = [m for m in grid.replies if m.metadata.message_type == "train"]
    (distilled,) = [m for m in grid.replies if m.metadata.message_type == "train.distill"]
    target = config.targets()[0]
    sources = {}
    for reply in trains:
        sources.update(split_client_arrays(reply.content["arrays"], reply.content["metrics"]["client-ids"]))
    ids = [int(c) for c in distilled.content["metrics"]["source-ids"]]
    adapted = split_client_arrays(distilled.content[f"adapted-{target}"], ids)
    mine = split_client_arrays(distilled.content["arrays"], [target])[target]
    weights = {int(k): v for k, v in {**rows[0]["target_weights"], **rows[0]["source_weights"]}.items()}
    (evaluate, *_) = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    averaged = evaluate.content["arrays"]
    for name in ("body.1.running_mean", "body.0.weight"):
        models = {target: mine, **{c: {**sources[c], **adapted[c]} for c in ids}}
        expected = sum(weights[c] * models[c][name].astype(np.float64) for c in models)
        np.testing.assert_allclose(averaged[name].numpy(), expected, rtol=1e-5, atol=1e-6)
    # the adapted statistics are not the sources' own: the vote moved them toward the target's
    assert not np.allclose(adapted[ids[0]]["body.1.running_mean"], sources[ids[0]]["body.1.running_mean"])


@pytest.mark.parametrize("warm", [True, False])
def test_a_targets_head_starts_from_the_mean_of_the_heads_of_its_first_vote(tmp_path, warm):
    # kd3a-distill = false: the target never trains, so its stored head is its start
    config, grid, _ = run(tmp_path, "kd3a-distill=false", f"kd3a-warm-head={str(warm).lower()}")
    target = config.targets()[0]
    first = next(m for m in grid.sent if m.metadata.message_type == "train.distill")
    ids = [int(c) for c in first.content["config"]["source-ids"]]
    heads = [split_client_arrays(first.content["sources"], ids)[c]["head.weight"] for c in ids]
    node = next(n for n, clients in node_clients(grid).items() if target in clients)
    kept = personal_arrays(grid.contexts[node])[f"{target}/head.weight"]
    initial = client_model(config, load_dataset(config)).state_dict()["head.weight"].numpy()
    assert not np.allclose(np.mean(heads, axis=0), initial)  # the sources trained their heads
    if warm:  # the first vote's heads, not the second's: the start is set once
        np.testing.assert_allclose(kept, sum(heads) / len(heads), rtol=1e-6, atol=1e-7)
    else:
        np.testing.assert_array_equal(kept, initial)


def test_malicious_fraction_corrupts_that_share_of_images_in_noise_mode():
    """malicious-fraction used to be read in shift mode only: noise at fraction 0.0 and
    0.3 replaced every image. Now it replaces exactly round(f·n) images (all at 1.0)."""
    from clients.app import corrupt

    config = load_config(None, [*SETTING, "malicious-mode=noise"])
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 3, 4, 4), dtype=np.float32) + 2.0, np.arange(40) % 10  # images outside [0, 1)
    for fraction, changed in ((0.0, 0), (0.3, 12), (1.0, 40)):
        cx, cy = corrupt(x, y, 10, config.replace(malicious_fraction=fraction), client=1)
        assert int((cx != x).any(axis=(1, 2, 3)).sum()) == changed
        np.testing.assert_array_equal(cy, y)  # labels untouched in noise mode
    every = corrupt(x, y, 10, config, client=1)[0]  # fraction 1.0: the same noise as before this change
    expected = np.random.default_rng([config.seed, 1, 4]).random(x.shape, dtype=np.float32)
    np.testing.assert_array_equal(every, expected)
