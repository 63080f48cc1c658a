"""FedRep with model patches (strategy = "fedrep-patch")."""

import numpy as np
from inprocess import InProcessGrid

from clients.app import app
from clients.patch import patch_names
from clients.personal import personal_arrays
from fedsim.algorithms import client_model
from fedsim.config import Config
from fedsim.data import load_dataset
from fedsim.history import RunWriter
from fedsim.server import model_bytes, run_rounds
from strategies.fedrep_patch import FedRepPatch

DOMAINS = dict(dataset="digit5-synth", synth_per_class=2, partitioner="domain", num_clients=5,
               model="cnn32bn", num_rounds=2, fraction_train=1.0, head_epochs=1, body_epochs=1)


def test_the_patch_is_every_batchnorm_scale_and_bias_and_never_sent():
    config = Config(strategy="fedrep-patch", **DOMAINS)
    model = client_model(config, load_dataset(config))
    patch = patch_names(model)
    assert patch == ["body.1.weight", "body.1.bias", "body.5.weight", "body.5.bias", "body.10.weight",
                     "body.10.bias"]
    sent = set(FedRepPatch(config).initial_arrays(model).keys())
    assert not sent & set(patch) and not any(n.startswith("head.") for n in sent)
    assert "body.1.running_mean" in sent and "body.0.weight" in sent
    fedrep = model_bytes(model, {n for n in model.state_dict() if n.startswith("body.")})
    patched = model_bytes(model, sent)
    patch_bytes = 4 * 2 * (32 + 64 + 128)  # float32 γ and β of three BatchNorm layers
    assert patched["shared"] == fedrep["shared"] - patch_bytes
    assert patched["personal"] == fedrep["personal"] + patch_bytes


def test_clients_keep_their_own_patches(tmp_path):
    config = Config(strategy="fedrep-patch", **DOMAINS)
    model = client_model(config, load_dataset(config))
    sent = set(FedRepPatch(config).initial_arrays(model).keys())
    writer = RunWriter(tmp_path / "run", config.to_dict())
    grid = InProcessGrid(app, 2)
    run_rounds(grid, config, writer, 2)
    summary = writer.finish()
    replies = [r for r in grid.replies if "arrays" in r.content]
    assert replies
    for reply in replies:  # bodies without the patch come back
        assert set(reply.content["arrays"].keys()) == sent
    held = {k: v for ctx in grid.contexts.values() for k, v in personal_arrays(ctx).items()}
    gammas = [held[f"{c}/body.1.weight"] for c in range(5)]
    assert all(not np.array_equal(gammas[0], g) for g in gammas[1:])  # each trained its own
    assert summary["bytes_per_client"] == model_bytes(model, sent)
    assert 0.0 <= writer.rows[-1]["accuracy"] <= 1.0
