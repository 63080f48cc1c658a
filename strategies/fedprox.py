"""FedProx: FedAvg with a proximal term in the local objective."""

from strategies.base import CohortFedAvg


class FedProx(CohortFedAvg):
    """FedProx (Li, Sahu, Zaheer, Sanjabi, Talwalkar, Smith, MLSys 2020). The server is
    FedAvg over the whole model. Client side: minimise fᵢ(w) + μ/2‖w − wᵗ‖² for
    ``local-epochs``, wᵗ the model received this round (μ = ``fedprox-mu``), and reply
    with the whole model; the global model is evaluated. μ = 0 is FedAvg."""
