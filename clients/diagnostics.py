"""What a client measures about the model it received, without training it: LogME of
the body's features (``logme = true``) and, for GradNorm aggregation, its loss and the
norm of that loss's gradient with respect to the last shared layer. Plain PyTorch and
numpy, no Flower or Ray."""

from __future__ import annotations

import torch
from torch import nn

from clients.routines import task_loss
from fedsim.evidence import logme


def body_of(model: nn.Module) -> nn.Module:
    """The representation (``body``) of ``model``: its ``body`` sub-module, else that of
    the first sub-module that has one (a wrapper such as FedProto's ``net``)."""
    for module in model.modules():
        body = getattr(module, "body", None)
        if isinstance(body, nn.Module):
            return body
    raise ValueError(f"logme needs a model with a body sub-module; {type(model).__name__} has none")


@torch.no_grad()
def body_logme(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """LogME (:func:`fedsim.logme.logme`, float64) of ``model``'s body features on
    ``x`` for labels ``y`` (regression when ``y`` is real-valued), the body in eval mode
    (BatchNorm uses its running statistics; nothing moves). nan without labels (an
    unlabeled target client, labels -1) or with fewer than two samples."""
    if len(y) < 2 or (not y.is_floating_point() and bool((y < 0).any())):
        return float("nan")
    body = body_of(model)
    body.eval()
    features = body(x).flatten(1).double().cpu().numpy()
    return logme(features, y.cpu().numpy(), regression=bool(y.is_floating_point()))


def last_shared_layer(model: nn.Module, shared: set[str] | dict) -> str:
    """Name of the last parameter of ``model`` that the server sent and that is a layer's
    kernel (two or more dimensions) — GradNorm's "last shared layer"."""
    kernels = [n for n, p in model.named_parameters() if n in shared and p.dim() >= 2]
    if not kernels:
        raise ValueError("aggregation = 'gradnorm' needs a shared layer with a kernel; the server sent "
                         f"{sorted(shared)}")
    return kernels[-1]


def loss_and_gradient_norm(
    model: nn.Module, layer: str, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(loss, ‖∂loss/∂W‖₂) of ``model`` as it is, on the whole of ``x, y`` (eval mode:
    BatchNorm statistics do not move), ``W`` the parameter named ``layer``."""
    model.eval()
    weight = dict(model.named_parameters())[layer]
    with torch.enable_grad():
        loss = task_loss(model(x), y)
        (grad,) = torch.autograd.grad(loss, [weight])
    return float(loss.detach()), float(grad.double().norm())
