"""FedRoD: a generic model for the balanced global objective plus personal heads."""

from strategies.base import CohortFedAvg


class FedRoD(CohortFedAvg):
    """FedRoD (Chen & Chao, ICLR 2022). The body and the generic head (``body.*``,
    ``head.*``) are averaged; ``personal_head.*`` never leaves the client. Client side:
    per batch, an SGD step on body + generic head with the balanced softmax loss
    (logits + log of the client's class counts) and one on the personal head with the
    cross-entropy of generic + personal logits (body and generic head fixed), for
    ``local-epochs``. Prediction = generic logits + personal logits."""

    def shares(self, name: str) -> bool:
        return name.startswith(("body.", "head."))
