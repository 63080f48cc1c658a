"""FedRep with model patches: BatchNorm scales and biases stay with each client."""

from torch import nn

from strategies.fedrep import FedRep


def batchnorm_affine(model: nn.Module) -> frozenset[str]:
    """Names of every BatchNorm scale and bias (γ, β) of ``model``."""
    return frozenset(f"{prefix}.{name}" for prefix, module in model.named_modules()
                     if isinstance(module, nn.modules.batchnorm._BatchNorm)
                     for name, _ in module.named_parameters(recurse=False))


class FedRepPatch(FedRep):
    """FedRep (Collins et al., ICML 2021) whose personal part is the head plus a model
    patch (Mudrakarta et al., ICLR 2019): every BatchNorm γ/β of the body. The server
    sends and averages the rest of the body (its BatchNorm running statistics included,
    as FedRep does). Client side: train the head and the patch for ``head-epochs`` with
    the rest frozen, then the rest of the body for ``body-epochs``; reply with the body
    without the patch. Without BatchNorm this is FedRep."""

    patch: frozenset[str] = frozenset()

    def initial_arrays(self, model: nn.Module):
        self.patch = batchnorm_affine(model)
        return super().initial_arrays(model)

    def shares(self, name: str) -> bool:
        return name.startswith("body.") and name not in self.patch
