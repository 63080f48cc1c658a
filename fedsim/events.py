"""TensorBoard event files of a run (``tensorboard = true``; the ``tensorboard`` extra).

Every metric row becomes scalars at its round: each number (accuracy, loss, train_loss,
the accuracy spread, val/unseen accuracy, distance, ...) under its own name, each list of
numbers as ``name/<index>`` and each dictionary of numbers (KD3A's domain weights and
consensus focus by client id, GradNorm's client weights) as ``name/<key>``.
Per-client dictionaries (``clients``, ``clients_loss``, ``clients_unseen``) stay in
metrics.jsonl. ``fedsim plot`` needs none of this.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any

MISSING = ("tensorboard = true needs the tensorboard package: pip install 'fedsim[tensorboard]' "
           "(or set tensorboard = false; fedsim plot draws the curves without it)")
SKIPPED = ("round", "round_seconds")


def require() -> None:
    """Raise ImportError with :data:`MISSING` when the writer cannot be created."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401 - needs tensorboard
    except ImportError as exc:
        raise ImportError(MISSING) from exc


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one metrics row (see the module docstring)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in SKIPPED or key.startswith("clients") or isinstance(value, bool):
            continue
        if isinstance(value, numbers.Real):
            out[key] = float(value)
        elif isinstance(value, (list, tuple, dict)) and value:
            items = value.items() if isinstance(value, dict) else enumerate(value)
            pairs = [(k, v) for k, v in items if isinstance(v, numbers.Real) and not isinstance(v, bool)]
            if len(pairs) == len(value):  # numbers only (KD3A's weights by client id, GradNorm's)
                out.update({f"{key}/{k}": float(v) for k, v in pairs})
    return out


class EventWriter:
    """Writes one run's rows as TensorBoard scalars into its directory."""

    def __init__(self, run_dir: Path) -> None:
        require()
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run_dir))

    def write(self, row: dict[str, Any]) -> None:
        for name, value in scalars(row).items():
            self._writer.add_scalar(name, value, global_step=int(row["round"]))
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
