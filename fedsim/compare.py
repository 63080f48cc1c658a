"""``fedsim compare``: strategies × seeds on one config, the sweep ``--grid strategy=…``
(runs in ``out/runs/<strategy>-seed<seed>``, ``table.md``, ``runs.csv``, ``curves.png``)."""

from __future__ import annotations

from pathlib import Path

from fedsim.sweep import execute, plan


def compare(
    config_path: str | None, overrides: list[str], strategies: list[str], seeds: list[int],
    out: str | Path, progress: bool = False,
) -> tuple[Path, list[str]]:
    """Run every (strategy, seed) not yet completed in ``out`` on one Ray start, then
    write the reports; returns ``out`` and the failed runs (see :func:`fedsim.sweep.execute`)."""
    sweep = plan(config_path, overrides, [("strategy", strategies)], seeds, out)
    return sweep.out, execute(sweep, progress)
