"""``fedsim run``, ``resume``, ``split``, ``plot``, ``affinity``, ``compare`` and ``sweep``.

Exit codes: 0 done; 1 a run failed (summary.json says why); 2 bad input, reported before
anything starts (config, data, paths); 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import warnings

from fedsim.config import ConfigError
from fedsim.data import DataError
from fedsim.history import EmptyRun

COMPARE_STRATEGIES = "fedrep,fedper,lg-fedavg,fedbabu,ditto,local,fedavg-ft,fedavg"
COMPARE_SEEDS = "0,1,2"


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers, at least one (``--seeds 0,1,2``)."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 0,1,2")
    return values


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only to show the help (the
    config keys' help imports and reads the registries of :mod:`fedsim.validate`)."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def _config_help() -> str:
    from fedsim.validate import help_text

    return help_text()


def build_parser() -> argparse.ArgumentParser:
    """The ``fedsim`` command line."""
    parser = _Parser(prog="fedsim", description="Federated personalized learning on Flower + Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter
    set_help = "override one config key (repeatable; keys and values: fedsim run --help)"
    run_p = sub.add_parser("run", help="run a simulation", formatter_class=raw, epilog=_config_help)
    run_p.add_argument("config", nargs="?", help="flat kebab-case TOML file")
    run_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config key (repeatable; the keys are listed below)")
    run_p.add_argument("--out", help="run directory (default: runs/<strategy>-<dataset>-<time>)")
    run_p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    split_p = sub.add_parser("split", help="picture of a config's client split (no training)")
    split_p.add_argument("config", nargs="?", help="flat kebab-case TOML file")
    split_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    split_p.add_argument("-o", "--output", default="split.png", help="PNG file to write")
    resume_p = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume_p.add_argument("run_dir", metavar="RUN_DIR")
    resume_p.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    plot_p = sub.add_parser("plot", help="plot accuracy vs round of one or more runs")
    plot_p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    plot_p.add_argument("-o", "--output", default="accuracy.png", help="PNG file to write")
    plot_p.add_argument("--label", action="append", default=[],
                        help="config key(s) for legend labels (default: keys that differ)")
    plot_p.add_argument("--metric", choices=("accuracy", "logme"), default="accuracy",
                        help="what to draw: test accuracy, or logme (runs with logme = true)")
    aff_p = sub.add_parser("affinity", help="heat map of a run's inter-client affinity (fedrep-groups)")
    aff_p.add_argument("run_dir", metavar="RUN_DIR")
    aff_p.add_argument("-o", "--output", default="affinity.png", help="PNG file to write")
    cmp_p = sub.add_parser("compare", help="strategies x seeds on one config: table + plot",
                           formatter_class=argparse.RawTextHelpFormatter)  # unbroken names
    cmp_p.add_argument("config", nargs="?", help="flat kebab-case TOML file")
    cmp_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=set_help.replace("; ", ";\n"))
    cmp_p.add_argument("--strategies", default=COMPARE_STRATEGIES,
                       help="comma-separated (default:\n%(default)s)")
    cmp_p.add_argument("--seeds", type=int_list, default=COMPARE_SEEDS,
                       help=f"comma-separated integers (default: {COMPARE_SEEDS})")
    cmp_p.add_argument("--out", required=True, help="directory for runs/, runs.csv, table.md, curves.png")
    sw_p = sub.add_parser("sweep", help="a grid of config values x seeds on one Ray start",
                          formatter_class=argparse.RawTextHelpFormatter)
    sw_p.add_argument("config", nargs="?", help="flat kebab-case TOML file")
    sw_p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                      help="values of one config key (repeatable; the grid is their\nCartesian product)")
    sw_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help=set_help.replace("; ", ";\n"))
    sw_p.add_argument("--seeds", type=int_list, default=COMPARE_SEEDS,
                      help=f"comma-separated integers (default: {COMPARE_SEEDS})")
    sw_p.add_argument("--select", choices=["val"],
                      help="val: per strategy, the grid point with the best mean\nvalidation accuracy "
                           "(needs val-fraction > 0) -> selection.md")
    sw_p.add_argument("--out", required=True, help="directory for runs/, runs.csv, table.md, curves.png")
    sw_p.add_argument("--progress", action="store_true", help="per-round progress lines")
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as ``fedsim: warning: ...`` lines on stderr (no source line)."""
    print(f"fedsim: warning: {message}", file=file or sys.stderr)


def entry() -> None:
    """The ``fedsim`` command (and ``python -m fedsim``): :func:`main`, then a quick exit.
    Once the exit handlers have run (Ray's shutdown, logging's flush), Python's teardown of
    the ~3,000 modules that torch, Flower and Ray bring in only costs time: 1.0–1.4 s
    after the last line is printed, measured here. Every file fedsim writes is closed by
    then (metrics.jsonl and TensorBoard's events when the run finishes), so the process
    ends at once. An exception out of :func:`main` takes Python's ordinary way out."""
    code = main()
    atexit._run_exitfuncs()  # what Python's exit would run first
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # e.g. a closed pipe (fedsim ... | head)
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the ``fedsim`` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "split":
            from fedsim.plot import plot_split
            from fedsim.validate import load_config

            print(f"wrote {plot_split(load_config(args.config, args.set), args.output)}")
            return 0
        if args.command == "affinity":
            from fedsim.affinity_plot import plot_affinity

            print(f"wrote {plot_affinity(args.run_dir, args.output)}")
            return 0
        from fedsim.plot import plot_runs

        path = plot_runs(args.runs, args.output, args.label or None, args.metric)
        print(f"wrote {path}")
        return 0
    except (ConfigError, DataError, EmptyRun, OSError) as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # a RunInterrupted says how far the run got
        print(f"fedsim: {exc or 'interrupted'}", file=sys.stderr)
        return getattr(exc, "exit_code", 130)


def _compare(args: argparse.Namespace) -> int:
    from fedsim.compare import compare

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    if not strategies:
        raise ConfigError(f"--strategies {args.strategies!r}: give at least one, "
                          f"e.g. --strategies fedrep,fedavg")
    out, failed = compare(args.config, args.set, strategies, args.seeds, args.out)
    return _grid_report(out, failed)


def _sweep(args: argparse.Namespace) -> int:
    from fedsim.sweep import execute, parse_grid, plan

    sweep = plan(args.config, args.set, parse_grid(args.grid), args.seeds, args.out)
    failed = execute(sweep, args.progress, args.select)
    return _grid_report(sweep.out, failed, args.select)


def _grid_report(out, failed: list[str], select: str | None = None) -> int:
    """Print the table (and the selection), say what was written; 1 if a run failed."""
    from pathlib import Path

    out = Path(out)
    print((out / "table.md").read_text())
    written = ["table.md", "runs.csv"] + (["curves.png"] if (out / "curves.png").is_file() else [])
    if select:
        print((out / "selection.md").read_text())
        written.append("selection.md")
    print(f"wrote {', '.join(str(out / w) for w in written)}")
    if failed:
        print(f"fedsim: {len(failed)} run(s) failed (their summary.json says why):\n  " + "\n  ".join(failed),
              file=sys.stderr)
        return 1
    return 0


def _resume(args: argparse.Namespace) -> int:
    from fedsim.simulation import RunFailed, resume

    try:
        summary = resume(args.run_dir, progress=not args.quiet)
    except RunFailed as exc:
        print(f"fedsim: run failed: {exc}\nfedsim: partial results in {args.run_dir}", file=sys.stderr)
        return 1
    return _report(summary, args.run_dir)


def _report(summary: dict, out: str) -> int:
    """Print the closing line: the final metrics, over how many rounds, wall time."""
    averaged = summary["rounds_averaged"]
    parts = [f"{key} {summary[key]:{fmt}}" for key, fmt in
             (("final_accuracy", ".4f"), ("final_loss", ".4g"), ("final_distance", ".4g"))
             if summary[key] is not None]
    if not averaged:
        parts, window = ["no evaluated round"], ""
    elif averaged == 1:
        window = " (the last evaluated round)"
    else:
        window = f" (mean of the last {averaged} evaluated rounds)"
    print(f"{', '.join(parts)}{window}, wall {summary['wall_seconds']:.1f} s -> {out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from fedsim.simulation import RunFailed, default_out_dir, run
    from fedsim.validate import load_config

    config = load_config(args.config, args.set)
    out = args.out or str(default_out_dir(config))
    print(f"fedsim: {config.strategy} on {config.dataset} ({config.partitioner}, "
          f"{config.num_clients} clients, {config.num_rounds} rounds) -> {out}", file=sys.stderr)
    try:
        summary = run(config, out, progress=not args.quiet)
    except RunFailed as exc:
        print(f"fedsim: run failed: {exc}\nfedsim: partial results in {out}", file=sys.stderr)
        return 1
    return _report(summary, out)


if __name__ == "__main__":
    sys.exit(main())
