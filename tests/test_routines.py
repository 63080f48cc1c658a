import pytest
import torch

from clients import specs
from clients.engine import train_one
from clients.routines import SGDStep, evaluate, run_epochs
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
    train_one(model, specs.FEDREP.train, x, y, Config(head_epochs=2, body_epochs=0), torch.Generator())
    assert same(body, snapshot(model.body)) and not same(head, snapshot(model.head))
    head = snapshot(model.head)
    train_one(model, specs.FEDREP.train, x, y, Config(head_epochs=0, body_epochs=2), torch.Generator())
    assert same(head, snapshot(model.head)) and not same(body, snapshot(model.body))
    assert all(p.requires_grad for p in model.parameters())  # flags restored


def test_training_lowers_loss_and_is_deterministic_in_the_generator():
    config, data, x, y = client_tensors()
    losses = []
    for _ in range(2):
        model = build_model(data, 32, 0)
        _, before = evaluate(model, x, y)
        train_one(model, specs.FEDAVG.train, x, y, config, torch.Generator().manual_seed(7))
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


@pytest.mark.parametrize("momentum, weight_decay", [(0.0, 0.0), (0.5, 1e-4), (0.9, 5e-4), (0.0, 1e-2)])
def test_sgd_step_is_bit_identical_to_torch_optim_sgd(momentum, weight_decay):
    def nets():
        torch.manual_seed(0)  # the second net is never in the loss: no gradient, skipped by both
        return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)), \
            torch.nn.Linear(2, 2)

    x, y = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2] * 2 + [0, 1])
    (net_a, idle_a), (net_b, idle_b) = nets(), nets()
    params_a = [*net_a.parameters(), *idle_a.parameters()]
    params_b = [*net_b.parameters(), *idle_b.parameters()]
    reference = torch.optim.SGD(params_a, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ours = SGDStep(params_b, 0.1, momentum, weight_decay)
    for step in range(5):
        reference.zero_grad()
        torch.nn.functional.cross_entropy(net_a(x * (step + 1)), y).backward()
        reference.step()
        loss = torch.nn.functional.cross_entropy(net_b(x * (step + 1)), y)
        ours(torch.autograd.grad(loss, params_b, allow_unused=True))
        assert all(torch.equal(a, b) for a, b in zip(params_a, params_b))
    assert torch.equal(idle_a.weight, idle_b.weight)
