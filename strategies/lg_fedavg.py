"""LG-FedAvg: local representation, global head."""

from strategies.base import CohortFedAvg


class LGFedAvg(CohortFedAvg):
    """LG-FedAvg (Liang et al., 2020): the reverse split of FedRep. Client side: train the
    whole model for ``local-epochs``; the body (representation) never leaves the client,
    only the head is sent and averaged."""

    def shares(self, name: str) -> bool:
        return name.startswith("head.")
