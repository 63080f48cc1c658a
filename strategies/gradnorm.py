"""GradNorm client weights (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018), with
clients as the tasks: pure maths and the server's per-client state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOOR = 0.01  # weights are clipped here (before renormalising) so no client's weight reaches 0


def gradnorm_update(
    weights: Sequence[float], grad_norms: Sequence[float], losses: Sequence[float],
    initial_losses: Sequence[float], alpha: float, lr: float, floor: float = FLOOR,
) -> np.ndarray:
    """One GradNorm step on the weights ``wᵢ`` of the clients of a round.

    ``grad_norms`` gᵢ = ‖∇_W Lᵢ‖ (W the last shared layer, the loss unweighted), so the
    weighted norm is Gᵢ = wᵢ·gᵢ. With L̃ᵢ = Lᵢ/Lᵢ(0) (``losses`` over ``initial_losses``)
    and the relative inverse training rate rᵢ = L̃ᵢ / mean(L̃), the target norm is
    mean(G)·rᵢ^α, held constant; the gradient of Σᵢ|Gᵢ − targetᵢ| in wᵢ is
    sign(Gᵢ − targetᵢ)·gᵢ. The weights take one step of size ``lr`` along it, are clipped
    at ``floor`` and renormalised to their sum before the step (so all clients'
    weights keep summing to the client count)."""
    w = np.asarray(weights, dtype=np.float64)
    g = np.asarray(grad_norms, dtype=np.float64)
    ratio = np.asarray(losses, dtype=np.float64) / np.asarray(initial_losses, dtype=np.float64)
    if not (len(w) == len(g) == len(ratio)) or len(w) == 0:
        raise ValueError(f"need one weight, norm and loss per client, got {len(w)}, {len(g)}, {len(ratio)}")
    rate = ratio / ratio.mean()
    norms = w * g
    target = norms.mean() * rate**alpha
    stepped = np.maximum(w - lr * np.sign(norms - target) * g, floor)
    return stepped * (w.sum() / stepped.sum())


class GradNormWeights:
    """The server's GradNorm state: every client's weight (1 until it is updated) and
    its first reported loss Lᵢ(0)."""

    def __init__(self, alpha: float, lr: float) -> None:
        self.alpha, self.lr = alpha, lr
        self.weights: dict[int, float] = {}
        self.initial: dict[int, float] = {}

    def of(self, clients: Sequence[int]) -> list[float]:
        """The current weights of ``clients``."""
        return [self.weights.get(c, 1.0) for c in clients]

    def update(self, clients: Sequence[int], grad_norms: Sequence[float], losses: Sequence[float]) -> None:
        """One :func:`gradnorm_update` over the round's ``clients`` (reports in that order);
        a client's first reported loss becomes its Lᵢ(0)."""
        for client, loss in zip(clients, losses):
            self.initial.setdefault(client, float(loss))
        new = gradnorm_update(self.of(clients), grad_norms, losses, [self.initial[c] for c in clients],
                              self.alpha, self.lr)
        self.weights.update({c: float(v) for c, v in zip(clients, new)})

    def state_dict(self) -> dict:
        return {"weights": {str(c): w for c, w in self.weights.items()},
                "initial": {str(c): v for c, v in self.initial.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.weights = {int(c): float(w) for c, w in state.get("weights", {}).items()}
        self.initial = {int(c): float(v) for c, v in state.get("initial", {}).items()}
