"""Every algorithm's client side, declared as local phases (see :mod:`clients.phases`).

Each declaration runs client by client or vectorized over a cohort, as the engine
decides; the name of each spec is the ``strategy`` it serves (see ``fedsim.algorithms``).
"""

from __future__ import annotations

import dataclasses

from clients.apfl import train_apfl
from clients.fedala import aggregate_locally, keep_local
from clients.fedproto import train_fedproto
from clients.fedrod import train_fedrod
from clients.l2sp import fine_tunes_all, finetune_l2sp
from clients.patch import train_body_without_patch, train_head_and_patch
from clients.perfedavg import adapt_one_step, train_perfedavg
from clients.pfedme import train_pfedme
from clients.phases import ClientSpec, Phase, Prox, Routine
from clients.routines import kd3a_epochs, solve_head
from fedsim.config import Config


def _lstsq(config: Config) -> bool:
    return config.head_solver == "lstsq"


def _once(config: Config) -> float:
    return 1.0  # a routine that runs once per round (its epochs are its own business)


def _kd3a_finetune_epochs(config: Config) -> float:
    return float(config.finetune_epochs) if config.kd3a_finetune else 0.0


def _solve_head(model, x, y, config, generator) -> float:
    solve_head(model, x, y)
    return float("nan")


WHOLE = Phase("whole", "", "local_epochs")
# the head (finetune-params = "head"), or every parameter under L2-SP ("all", client by client)
FINETUNE_HEAD = Phase("finetune-head", "head.", "finetune_epochs",
                      routine=Routine(finetune_l2sp, fine_tunes_all))

# FedRep (Collins et al., ICML 2021, Alg. 1): the head with the body frozen (or solved
# exactly), then the body with the head frozen.
FEDREP = ClientSpec(train=(
    Phase("head", "head.", "head_epochs", routine=Routine(_solve_head, _lstsq)),
    Phase("body", "body.", "body_epochs"),
))
# FedRep with model patches (Mudrakarta et al., ICLR 2019): the head and the body's BatchNorm
# γ/β (the patch, personal), then the rest of the body.
FEDREP_PATCH = ClientSpec(train=(
    Phase("head+patch", "head.", "head_epochs", routine=Routine(train_head_and_patch)),
    Phase("body", "body.", "body_epochs", routine=Routine(train_body_without_patch)),
))
# FedAvg, FedPer, LG-FedAvg, Local: every parameter; they differ only in what is shared.
FEDAVG = ClientSpec(train=(WHOLE,))
# FedAvg+FT: FedAvg, then the head fine-tuned before evaluation (not kept); a client that
# never trained fine-tunes a fresh head on the received body (FedRep's new-client protocol).
FEDAVG_FT = ClientSpec(train=(WHOLE,), finetune=(FINETUNE_HEAD,), fresh="head.")
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
# With kd3a-finetune, a labeled client fine-tunes a personal head before it evaluates (a
# target has no labels: it fine-tunes on nothing, see clients.app).
KD3A_SOURCE = ClientSpec(train=(Phase("source", "", kd3a_epochs),),
                         finetune=(dataclasses.replace(FINETUNE_HEAD, epochs=_kd3a_finetune_epochs),))

# --- the personalized baselines of PFLlib / FL-bench / FLGo ---------------------------
# FedProx (Li et al., MLSys 2020): FedAvg's update with μ/2‖w − wᵗ‖² toward the received model.
FEDPROX = ClientSpec(train=(Phase("whole", "", "local_epochs", prox=Prox("fedprox_mu")),))
# FedBN (Li et al., ICLR 2021): FedAvg's update; the strategy keeps BatchNorm layers local.
FEDBN = FEDAVG
# pFedMe (T. Dinh et al., NeurIPS 2020): K personal steps per batch, then the local model
# moves toward the personal one; the personal model is evaluated.
PFEDME = ClientSpec(train=(Phase("pfedme", "", "local_epochs", routine=Routine(train_pfedme)),),
                    evaluates="personal")
# Per-FedAvg (Fallah et al., NeurIPS 2020): MAML meta steps; evaluated after one adaptation step.
PERFEDAVG = ClientSpec(
    train=(Phase("meta", "", "local_epochs", routine=Routine(train_perfedavg)),),
    finetune=(Phase("adapt", "", _once, routine=Routine(adapt_one_step)),),
)
# APFL (Deng et al., 2020): w, the personal model and α per step; the mixture is evaluated.
APFL = ClientSpec(train=(Phase("apfl", "", "local_epochs", routine=Routine(train_apfl)),))
# FedRoD (Chen & Chao, ICLR 2022): balanced-softmax generic model + personal head per batch.
FEDROD = ClientSpec(train=(Phase("fedrod", "", "local_epochs", routine=Routine(train_fedrod)),))
# FedALA (Zhang et al., AAAI 2023): adaptive local aggregation, then FedAvg's local training of
# the initialised model, which becomes the client's local model; evaluation after ALA (a copy).
_ALA = Phase("ala", "shared.", _once, routine=Routine(aggregate_locally))
FEDALA = ClientSpec(
    train=(_ALA, Phase("local", "shared.", "local_epochs", forward="shared"),
           Phase("keep", "local.", _once, routine=Routine(keep_local))),
    finetune=(_ALA,), evaluates="shared",
)
# FedProto (Tan et al., AAAI 2022): CE + λ·prototype distance; replies with prototypes only.
FEDPROTO = ClientSpec(train=(Phase("fedproto", "net.", "local_epochs", routine=Routine(train_fedproto)),))
