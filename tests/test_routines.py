import torch

from clients.routines import evaluate, run_epochs, train_fedrep, train_whole
from fedsim.config import Config
from fedsim.data import load_dataset, make_split
from fedsim.models import build_model


def client_tensors():
    config = Config()
    data = load_dataset(config)
    split = make_split(config, data)[0]
    return config, data, torch.from_numpy(data.x[split.train]), torch.from_numpy(data.y[split.train])


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_head_phase_freezes_body_and_body_phase_freezes_head():
    config, data, x, y = client_tensors()
    model = build_model(data, 32, 0)
    body, head = snapshot(model.body), snapshot(model.head)
    train_fedrep(model, x, y, Config(head_epochs=2, body_epochs=0), torch.Generator().manual_seed(0))
    assert same(body, snapshot(model.body)) and not same(head, snapshot(model.head))
    head = snapshot(model.head)
    train_fedrep(model, x, y, Config(head_epochs=0, body_epochs=2), torch.Generator().manual_seed(0))
    assert same(head, snapshot(model.head)) and not same(body, snapshot(model.body))
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_training_lowers_loss_and_is_deterministic_in_the_generator():
    config, data, x, y = client_tensors()
    losses = []
    for _ in range(2):
        model = build_model(data, 32, 0)
        _, before = evaluate(model, x, y)
        train_whole(model, x, y, config, torch.Generator().manual_seed(7))
        _, after = evaluate(model, x, y)
        losses.append(after)
        assert after < before
    assert losses[0] == losses[1]


def test_zero_epochs_changes_nothing():
    config, data, x, y = client_tensors()
    model = build_model(data, 32, 0)
    before = snapshot(model)
    assert torch.isnan(torch.tensor(run_epochs(model, model.parameters(), x, y, 0, config,
                                               torch.Generator())))
    assert same(before, snapshot(model))


def test_evaluate_exact_accuracy():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    accuracy, loss = evaluate(Fixed(), x, y)
    assert accuracy == 0.75
    expected = torch.nn.functional.cross_entropy(x, y).item()
    assert loss == expected


def test_a_lone_last_sample_joins_the_previous_batch():
    config = Config(batch_size=4)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    x, y = torch.randn(9, 3), torch.tensor([0, 1] * 4 + [0])
    sizes = []
    model.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    run_epochs(model, model.parameters(), x, y, 1, config, torch.Generator().manual_seed(0))
    assert sizes == [4, 5]  # not [4, 4, 1], which BatchNorm cannot train on
