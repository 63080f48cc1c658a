"""FedRep: shared body, personal heads."""

from strategies.base import CohortFedAvg


class FedRep(CohortFedAvg):
    """FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021).

    Only the body (``body.*``) is sent and averaged. Client side: keep a personal head
    in client state, train it for ``head-epochs`` with the body frozen, then the body for
    ``body-epochs`` with the head frozen, and reply with the body alone.
    """

    def shares(self, name: str) -> bool:
        return name.startswith("body.")
