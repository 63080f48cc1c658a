"""``fedsim run``, ``resume``, ``split``, ``plot`` and ``compare``.

Exit codes: 0 done; 1 a run failed (summary.json says why); 2 bad input, reported before
anything starts (config, data, paths); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys

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
    config keys' help reads the registries, which import torch)."""

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
    cmp_p = sub.add_parser("compare", help="strategies x seeds on one config: table + plot",
                           formatter_class=argparse.RawTextHelpFormatter)  # unbroken names
    cmp_p.add_argument("config", nargs="?", help="flat kebab-case TOML file")
    cmp_p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=set_help.replace("; ", ";\n"))
    cmp_p.add_argument("--strategies", default=COMPARE_STRATEGIES,
                       help="comma-separated (default:\n%(default)s)")
    cmp_p.add_argument("--seeds", type=int_list, default=COMPARE_SEEDS,
                       help=f"comma-separated integers (default: {COMPARE_SEEDS})")
    cmp_p.add_argument("--out", required=True, help="directory for runs/, table.md, curves.png")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``fedsim`` command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "resume":
            return _resume(args)
        if args.command == "split":
            from fedsim.plot import plot_split
            from fedsim.validate import load_config

            print(f"wrote {plot_split(load_config(args.config, args.set), args.output)}")
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
        return 130


def _compare(args: argparse.Namespace) -> int:
    from fedsim.compare import compare
    from fedsim.simulation import RunFailed

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    try:
        out = compare(args.config, args.set, strategies, args.seeds, args.out)
    except RunFailed as exc:
        print(f"fedsim: a run failed: {exc}", file=sys.stderr)
        return 1
    print((out / "table.md").read_text())
    print(f"wrote {out / 'table.md'} and {out / 'curves.png'}")
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
