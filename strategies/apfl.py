"""APFL: a personal model mixed with the global one."""

from strategies.base import CohortFedAvg


class APFL(CohortFedAvg):
    """APFL (Deng, Kamani, Mahdavi, 2020). The client model is (``shared.*`` = w,
    ``personal.*`` = vᵢ, ``alpha`` = αᵢ); only ``shared.*`` goes to the server (FedAvg).
    Client side: each local step updates w by SGD on fᵢ(w), vᵢ by SGD on fᵢ(v̄ᵢ) with
    v̄ᵢ = αᵢvᵢ + (1 − αᵢ)w, and, with ``apfl-adaptive``, αᵢ by gradient descent on fᵢ(v̄ᵢ)
    (clipped to [0, 1]; initial value ``apfl-alpha``). Evaluated: the mixture
    αᵢvᵢ + (1 − αᵢ)w with the received global w."""

    def shares(self, name: str) -> bool:
        return name.startswith("shared.")
