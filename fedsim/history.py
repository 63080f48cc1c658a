"""Run directory: config.json, metrics.jsonl (one line per round), summary.json (and,
with ``tensorboard = true``, TensorBoard event files: :mod:`fedsim.events`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FINAL_WINDOW = 10  # FedRep reports the mean accuracy of the last 10 rounds


class EmptyRun(ValueError):
    """A run directory holds nothing to show (no evaluated round)."""


class RunWriter:
    """Appends round metrics as they come (flushed, so a crash keeps them) and writes
    the summary at the end, also when the run fails."""

    def __init__(
        self, out_dir: str | Path, config: dict[str, Any], resume_after: int | None = None
    ) -> None:
        """A new run directory, or (``resume_after`` = a round) the existing one with the
        rows after that round dropped, since the resumed run recomputes them."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start = time.perf_counter()
        self.rows: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}  # more summary entries (e.g. which engine path ran)
        if resume_after is not None:
            _, rows = read_run(self.dir)
            self.rows = [r for r in rows if r["round"] <= resume_after]
        write_json(self.dir / "config.json", config)
        self._metrics = open(self.dir / "metrics.jsonl", "w", encoding="utf-8")
        for row in self.rows:
            self._metrics.write(json.dumps(row, sort_keys=True) + "\n")
        self._metrics.flush()
        self._events = None
        if config.get("tensorboard"):  # a resumed run appends a new event file
            from fedsim.events import EventWriter

            self._events = EventWriter(self.dir)

    def log_round(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self._metrics.write(json.dumps(row, sort_keys=True) + "\n")
        self._metrics.flush()
        if self._events is not None:
            self._events.write(row)

    def finish(self, error: str | None = None, status: str | None = None) -> dict[str, Any]:
        """Close metrics.jsonl and write summary.json; returns the summary. ``status`` is
        ``completed`` without an error, else ``failed`` unless given (``interrupted``)."""
        self._metrics.close()
        if self._events is not None:
            self._events.close()
        summary = summarize(self.rows)
        summary["wall_seconds"] = round(time.perf_counter() - self.start, 3)
        summary["status"] = status or ("failed" if error else "completed")
        summary["error"] = error
        summary.update(self.extra)
        write_json(self.dir / "summary.json", summary)
        return summary


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over the last ``FINAL_WINDOW`` (10) evaluated rounds, as FedRep reports:
    ``final_accuracy`` (None for regression), ``final_loss`` (test loss; MSE for
    regression) and ``final_distance`` (None unless logged), and where logged
    ``final_val_accuracy``, ``final_unseen_accuracy`` and ``final_accuracy_p10``;
    ``rounds_averaged`` says how many rounds those means cover."""
    evaluated = [r for r in rows if r.get("loss") is not None or r.get("accuracy") is not None]
    last = evaluated[-FINAL_WINDOW:]
    return {
        "final_accuracy": _mean(r.get("accuracy") for r in last),
        **{f"final_{key}": _mean(r.get(key) for r in last)
           for key in ("val_accuracy", "unseen_accuracy", "accuracy_p10")
           if any(r.get(key) is not None for r in last)},
        "final_loss": _mean(r.get("loss") for r in last),
        "final_distance": _mean(r.get("distance") for r in last),
        "rounds_averaged": len(last),
        "best_accuracy": max((r["accuracy"] for r in evaluated if r.get("accuracy") is not None),
                             default=None),
        "rounds_completed": rows[-1]["round"] if rows else 0,
        **logme_summary(evaluated),
    }


def logme_summary(evaluated: list[dict[str, Any]]) -> dict[str, Any]:
    """With ``logme = true``: ``final_logme`` (the last evaluated round's) and
    ``logme_spearman``, Spearman's rank correlation between each client's LogME and its
    personal accuracy in the last round that has both (None if not computable)."""
    from fedsim.evidence import spearman

    rows = [r for r in evaluated if r.get("clients_logme") and r.get("clients")]
    if not rows:
        return {}
    last = rows[-1]
    pairs = [(v, last["clients"][c]) for c, v in last["clients_logme"].items()
             if v is not None and last["clients"].get(c) is not None]
    rho = spearman([p for p, _ in pairs], [a for _, a in pairs]) if len(pairs) > 1 else float("nan")
    return {"final_logme": last.get("logme"), "logme_spearman": None if rho != rho else rho}


def _mean(values: Any) -> float | None:
    """Mean of the values that are not None; None if there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_run(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config, metric rows) of a run directory."""
    run_dir = Path(run_dir)
    for name in ("config.json", "metrics.jsonl"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{str(run_dir)!r} is not a fedsim run directory (no {name})")
    config = json.loads((run_dir / "config.json").read_text())
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a killed run: everything before it is complete
    return config, rows
