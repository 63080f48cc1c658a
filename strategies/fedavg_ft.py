"""FedAvg followed by local head fine-tuning before evaluation."""

from strategies.fedavg import FedAvgWhole


class FedAvgFT(FedAvgWhole):
    """FedAvg+FT (the FedRep paper's baseline): FedAvg training; for evaluation every
    client fine-tunes the head of the global model for ``finetune-epochs`` on its own data
    (the fine-tuned head is not kept); with ``finetune-params = "all"`` every parameter
    fine-tunes under L2-SP toward the received model (:mod:`clients.l2sp`)."""
