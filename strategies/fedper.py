"""FedPer: body and head trained jointly, only the body averaged."""

from strategies.base import CohortFedAvg


class FedPer(CohortFedAvg):
    """FedPer (Arivazhagan et al., 2019). Client side: train body and head jointly for
    ``local-epochs``; the head stays in client state, only the body is sent and averaged."""

    def shares(self, name: str) -> bool:
        return name.startswith("body.")
