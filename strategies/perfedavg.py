"""Per-FedAvg: FedAvg of a MAML objective."""

from strategies.base import CohortFedAvg


class PerFedAvg(CohortFedAvg):
    """Per-FedAvg (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020). The server is FedAvg over
    the whole model. Client side: minimise the MAML objective fᵢ(w − α∇fᵢ(w)) with
    ``local-epochs`` passes of meta steps (α = ``perfedavg-alpha``, meta step size β =
    ``perfedavg-beta``, first-order or Hessian-free by ``perfedavg-variant``), reply with
    the whole model. Evaluation: the global model after one local adaptation step
    w − α∇fᵢ(w) on a training batch (not kept)."""
