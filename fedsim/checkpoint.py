"""Checkpoints: one ``checkpoint.npz`` per run directory, replaced atomically.

It holds the server's arrays (``server/<param>``), every client's personal arrays
(``client/<client>/<param>``) and a JSON header (round, strategy state). Sampling and
client shuffling are pure functions of (seed, round, client), so no RNG state is needed
to continue a run exactly. Loading never unpickles (``allow_pickle=False``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data import DataError

FILE = "checkpoint.npz"
_HEADER = "__header__"


@dataclass
class Checkpoint:
    """The state after round ``round``."""

    round: int
    server: dict[str, np.ndarray]
    clients: dict[str, np.ndarray]  # "<client>/<param>"
    strategy_state: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(run_dir: str | Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint.npz`` atomically (a crash mid-write leaves the previous one)."""
    path = Path(run_dir) / FILE
    header = json.dumps({"round": checkpoint.round, "strategy_state": checkpoint.strategy_state})
    arrays = {f"server/{k}": v for k, v in checkpoint.server.items()}
    arrays.update({f"client/{k}": v for k, v in checkpoint.clients.items()})
    arrays[_HEADER] = np.frombuffer(header.encode(), dtype=np.uint8)
    tmp = path.with_name(FILE + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(run_dir: str | Path) -> Checkpoint:
    """Read ``checkpoint.npz``; a missing or corrupt file raises FileNotFoundError/DataError."""
    path = Path(run_dir) / FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint in {str(run_dir)!r}: the run needs checkpoint-every > 0 and at "
            f"least that many completed rounds"
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data[_HEADER]).decode())
            server = {k[len("server/"):]: data[k] for k in data.files if k.startswith("server/")}
            clients = {k[len("client/"):]: data[k] for k in data.files if k.startswith("client/")}
    except Exception as exc:  # zip, npy or JSON damage
        raise DataError(f"checkpoint {str(path)!r} is unreadable: {exc}") from exc
    return Checkpoint(int(header["round"]), server, clients, header.get("strategy_state", {}))
