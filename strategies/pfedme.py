"""pFedMe: personalized models regularised toward local copies of the global model."""

from __future__ import annotations

import numpy as np

from strategies.base import CohortFedAvg


def beta_mix(previous: dict[str, np.ndarray], averaged: dict[str, np.ndarray], beta: float):
    """(1 − β)·previous + β·averaged per key (β = 1: the average itself)."""
    if beta == 1.0:
        return averaged
    return {k: np.asarray((1 - beta) * previous[k].astype(np.float64) + beta * v.astype(np.float64))
            .astype(v.dtype) for k, v in averaged.items()}


class PFedMe(CohortFedAvg):
    """pFedMe (T. Dinh, Tran, Nguyen, NeurIPS 2020). The client model is a pair
    (``shared.*`` = wᵢ, ``personal.*`` = θᵢ); only ``shared.*`` goes to the server. Client
    side: θᵢ starts at the received w; for every mini-batch, ``pfedme-k`` steps on
    fᵢ(θ) + λ/2‖θ − wᵢ‖² (lr ``pfedme-lr``, λ = ``pfedme-lambda``), then
    wᵢ ← wᵢ − ``lr``·λ(wᵢ − θᵢ); reply with wᵢ; θᵢ is kept and evaluated. The server
    mixes: w ← (1 − β)·w + β·average(wᵢ), β = ``pfedme-beta``."""

    previous: dict[str, np.ndarray] = {}

    def shares(self, name: str) -> bool:
        return name.startswith("shared.")

    def configure_train(self, server_round, arrays, config, grid):
        self.previous = {k: v.numpy() for k, v in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def average(self, weights, updates):
        return beta_mix(self.previous, super().average(weights, updates), self.config.pfedme_beta)
