"""FedProto: clients share class prototypes, never model weights."""

from __future__ import annotations

import numpy as np

from strategies.base import CohortFedAvg

SHARED = ("prototypes", "prototype_counts")


def average_prototypes(
    prototypes: list[np.ndarray], counts: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Per class c: Σᵢ nᵢc·pᵢc / Σᵢ nᵢc (zero where no client has c) and Σᵢ nᵢc, from the
    clients' prototypes [classes × features] and class counts [classes]."""
    n = np.stack(counts).astype(np.float64)
    total = n.sum(0)
    weighted = np.einsum("ic,icd->cd", n, np.stack(prototypes).astype(np.float64))
    mean = np.where(total[:, None] > 0, weighted / np.maximum(total, 1.0)[:, None], 0.0)
    return mean.astype(prototypes[0].dtype), total.astype(counts[0].dtype)


class FedProto(CohortFedAvg):
    """FedProto (Tan, Long, Liu, Zhou, Lu, Jiang, Zhang, AAAI 2022). Only prototypes
    cross client boundaries: the server sends the global per-class prototypes and
    counts (``prototypes``, ``prototype_counts``) and receives each client's; it
    averages them per class, weighted by the clients' class counts. Client side: train
    the whole (personal) model for ``local-epochs`` on CE + λ·‖f(x) − p̄_y‖² (λ =
    ``fedproto-lambda``), reply with the mean feature of each of its classes and its
    class counts. Prediction: the class of the nearest global prototype."""

    def shares(self, name: str) -> bool:
        return name in SHARED

    def average(self, weights, updates):
        mean, total = average_prototypes([u["prototypes"] for u in updates],
                                         [u["prototype_counts"] for u in updates])
        return {"prototypes": mean, "prototype_counts": total}
