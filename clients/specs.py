"""Every algorithm's client side, declared as local phases (see :mod:`clients.phases`).

Each declaration runs client by client or vectorized over a cohort, as the engine
decides; the name of each spec is the ``strategy`` it serves (see ``fedsim.algorithms``).
"""

from __future__ import annotations

from clients.phases import ClientSpec, Phase, Prox, Routine
from clients.routines import kd3a_epochs, solve_head
from fedsim.config import Config


def _lstsq(config: Config) -> bool:
    return config.head_solver == "lstsq"


def _solve_head(model, x, y, config, generator) -> float:
    solve_head(model, x, y)
    return float("nan")


WHOLE = Phase("whole", "", "local_epochs")
FINETUNE_HEAD = Phase("finetune-head", "head.", "finetune_epochs")

# FedRep (Collins et al., ICML 2021, Alg. 1): the head with the body frozen (or solved
# exactly), then the body with the head frozen.
FEDREP = ClientSpec(train=(
    Phase("head", "head.", "head_epochs", routine=Routine(_solve_head, _lstsq)),
    Phase("body", "body.", "body_epochs"),
))
# FedAvg, FedPer, LG-FedAvg, Local: every parameter; they differ only in what is shared.
FEDAVG = ClientSpec(train=(WHOLE,))
# FedAvg+FT: FedAvg, then the head fine-tuned before evaluation (not kept).
FEDAVG_FT = ClientSpec(train=(WHOLE,), finetune=(FINETUNE_HEAD,))
# FedBABU (Oh, Kim, Yun, ICLR 2022): the body only, the head frozen at its random init;
# the head fine-tuned before evaluation.
FEDBABU = ClientSpec(train=(Phase("body", "body.", "local_epochs"),), finetune=(FINETUNE_HEAD,))
# Ditto (Li et al., ICML 2021, Alg. 1): the shared model's FedAvg update, then the
# personal model with λ/2‖v − w‖², w the shared model received this round.
DITTO = ClientSpec(
    train=(Phase("shared", "shared.", "local_epochs", forward="shared"),
           Phase("personal", "personal.", "local_epochs", forward="personal",
                 prox=Prox("ditto_lambda", anchor="shared."))),
    evaluates="personal",
)
# KD3A sources: the whole model on their labels for 1/r epochs (the target's
# distillation is its own message, see clients.app.distill).
KD3A_SOURCE = ClientSpec(train=(Phase("source", "", kd3a_epochs),))
