"""FedBABU: body trained and averaged, head frozen at its random init."""

from strategies.base import CohortFedAvg


class FedBABU(CohortFedAvg):
    """FedBABU (Oh, Kim, Yun, ICLR 2022). Client side: train only the body for
    ``local-epochs``; the head keeps its (shared) random initialisation during federated
    training. Only the body is averaged. For evaluation each client fine-tunes a copy of
    the head for ``finetune-epochs`` (``finetune-params = "all"``: every parameter, under
    L2-SP toward the received body, :mod:`clients.l2sp`)."""

    def shares(self, name: str) -> bool:
        return name.startswith("body.")
