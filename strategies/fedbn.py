"""FedBN: BatchNorm layers stay local, everything else is averaged."""

from torch import nn

from strategies.base import CohortFedAvg


def batchnorm_entries(model: nn.Module) -> frozenset[str]:
    """Names of every BatchNorm parameter and running statistic of ``model``."""
    return frozenset(
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for name, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    )


class FedBN(CohortFedAvg):
    """FedBN (Li, Jiang, Zhang, Kamp, Dou, ICLR 2021). The server averages every
    parameter except those of BatchNorm layers; BatchNorm weights, biases and running
    statistics never leave the client (so each client normalises its own feature
    distribution). Client side: FedAvg's update of the whole model for ``local-epochs``,
    reply with the non-BatchNorm arrays; evaluated with the global weights and its own
    BatchNorm layers. On a model without BatchNorm this is FedAvg."""

    local: frozenset[str] = frozenset()

    def initial_arrays(self, model: nn.Module):
        self.local = batchnorm_entries(model)
        return super().initial_arrays(model)

    def shares(self, name: str) -> bool:
        return name not in self.local
