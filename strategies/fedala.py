"""FedALA: adaptive local aggregation of the received model."""

from strategies.base import CohortFedAvg


class FedALA(CohortFedAvg):
    """FedALA (Zhang, Hua, Wang, Song, Xue, Ma, Guan, AAAI 2023). The server is FedAvg
    over ``shared.*``. Client side: before training, initialise the local model from the
    received one w and its previous local model l: lower layers ← w, the top
    ``fedala-layers`` layers ← l + (w − l) ⊙ W with element-wise weights W ∈ [0, 1]
    learned on a random ``fedala-sample`` share of its data (lr ``fedala-eta``); train it
    for ``local-epochs`` and reply with it; it becomes the new l (``local.*``, kept with W
    in ``weights.*``). Evaluated: the model ALA initialises from the received global
    one (computed on a copy, not kept)."""

    def shares(self, name: str) -> bool:
        return name.startswith("shared.")
