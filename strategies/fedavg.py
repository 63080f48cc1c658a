"""FedAvg: the whole model is shared and evaluated as one global model."""

from strategies.base import CohortFedAvg


class FedAvgWhole(CohortFedAvg):
    """FedAvg (McMahan et al., AISTATS 2017). Every parameter is shared; each client
    trains the whole model for ``local-epochs`` and the server averages all of it."""
