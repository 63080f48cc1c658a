"""Ditto: a FedAvg global model plus a regularised personal model per client."""

from strategies.base import CohortFedAvg


class Ditto(CohortFedAvg):
    """Ditto (Li, Hu, Beirami, Smith, ICML 2021). The client model is a pair
    (``shared.*``, ``personal.*``); only ``shared.*`` is averaged (FedAvg). Client side:
    FedAvg update of the shared model, then ``local-epochs`` on the personal model with
    the proximal term ``ditto-lambda``/2·‖v − w‖²; evaluation uses the personal model."""

    def shares(self, name: str) -> bool:
        return name.startswith("shared.")
