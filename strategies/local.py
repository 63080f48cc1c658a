"""Local-only training: nothing is shared."""

from strategies.base import CohortFedAvg


class LocalOnly(CohortFedAvg):
    """Local-only baseline (as in the FedRep paper's comparisons). The server sends and
    receives no parameters; each client trains its whole model on its own data for
    ``local-epochs`` per round and keeps it in client state."""

    def shares(self, name: str) -> bool:
        return False
