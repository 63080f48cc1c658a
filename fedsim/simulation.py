"""Run one configured simulation on Flower's simulation engine with the Ray backend."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.algorithms import engine_paths, strategy_class
from fedsim.config import Config, ConfigError
from fedsim.data import ClientSplit, Dataset, client_splits, load_dataset
from fedsim.flower_sql import defer_sql_state
from fedsim.history import RunWriter
from fedsim.lean_ray import lean_local_ray
from fedsim.pump import fast_message_pump
from fedsim.ray_thread import RayThread
from fedsim.stopping import (
    STOP,
    RunInterrupted,
    Stopped,
    exit_code,
    rearm_sigterm,
    stop_on_signals,
    stopped_by,
    tracked_backends,
)
from fedsim.validate import BUILTIN_NAMES, config_from_dict, validate
from fedsim.zoo import model_name

defer_sql_state()  # before anything imports Flower's simulation engine (fedsim/flower_sql.py)


class RunFailed(RuntimeError):
    """The run started but did not complete; the run directory says how far it got."""


def default_out_dir(config: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{config.strategy}-{config.dataset}-{stamp}"


def run(config: Config, out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Validate everything that can be checked without Ray, run the simulation, and
    return the summary. Raises ConfigError/DataError before starting anything, and
    RunFailed (after writing summary.json with the error) if the run fails."""
    out = Path(out_dir) if out_dir else default_out_dir(config)
    if (out / "metrics.jsonl").exists():
        raise ConfigError(f"--out {str(out)!r} already holds a run; choose another directory")
    return _execute(config, out, progress, None)


def run_once(config: Config, run_dir: str | Path, progress: bool = False) -> list[dict[str, Any]]:
    """The metric rows of ``run_dir``: reused if it holds a completed run of the same
    config, else (after removing a run cut short or of another config) run now.
    Experiment grids call this to be re-runnable."""
    import shutil

    from fedsim.history import read_run

    run_dir = Path(run_dir)
    if not completed(config, run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        run(config, run_dir, progress=progress)
    return read_run(run_dir)[1]


def completed(config: Config, run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a completed run of exactly ``config``."""
    import json

    summary = run_dir / "summary.json"
    try:
        return (json.loads((run_dir / "config.json").read_text()) == json.loads(json.dumps(config.to_dict()))
                and json.loads(summary.read_text()).get("status") == "completed")
    except (OSError, ValueError):
        return False


def run_many(
    jobs: list[tuple[Config, Path]], progress: bool = False, announce: Any = None,
) -> list[dict[str, Any]]:
    """Run every (config, run directory) one after another on **one** Ray start and one
    Flower simulation per resource layout (``client-num-cpus``/``-gpus``, ``ray-address``,
    ``verbose``): actors, imports and data stay warm between runs; every run starts with
    empty client state. A run that fails is recorded (its summary.json says why) and the
    next one starts; Ctrl-C stops them all (RunInterrupted). Returns every run's summary
    (``{"status": "failed", "error": ...}`` for one whose directory could not be written).
    ``announce(index, config, out)`` is called as each run starts. Configs are expected
    validated (``fedsim.validate.load_config``)."""
    for config, _ in jobs:
        _check_before_ray(config)
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    layouts: dict[tuple, list[int]] = {}
    for i, (config, _) in enumerate(jobs):
        key = (config.ray_address, config.client_num_cpus, config.client_num_gpus, config.verbose)
        layouts.setdefault(key, []).append(i)
    with stop_on_signals():
        for indices in layouts.values():
            group = [jobs[i] for i in indices]
            try:
                _quiet(group[0][0].verbose)
                _init_ray(group[0][0])  # once for the whole group
                num_nodes = max(_nodes_for(config) for config, _ in group)
                if STOP.is_set():
                    raise Stopped
                summaries = _simulate_many(group, num_nodes, progress, announce, indices)
            except BaseException as exc:  # noqa: BLE001 - Ray could not start, or Ctrl-C
                if STOP.is_set() or isinstance(exc, KeyboardInterrupt):
                    raise RunInterrupted(f"interrupted ({stopped_by()}); the runs completed so far "
                                         f"are kept", exit_code()) from None
                summaries = [{"status": "failed", "error": f"{type(exc).__name__}: {exc}"}] * len(group)
            finally:
                _stop_ray()
            for i, summary in zip(indices, summaries):
                results[i] = summary
    return results  # type: ignore[return-value]


def resume(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Continue a run from its last checkpoint (after a crash, a kill or Ctrl-C). The rows
    after the checkpoint are recomputed, so metrics.jsonl ends as an uninterrupted run's.
    A checkpoint of the last round leaves nothing to run: the summary is rewritten
    (completed) without starting Ray; a completed run (checkpoint or not) is left as it is
    and its summary returned."""
    import json

    from fedsim.checkpoint import load_checkpoint
    from fedsim.history import read_run

    config = config_from_dict(read_run(run_dir)[0])
    # summary.json's status, not a comparison of configs: the config.json of a run that an
    # older fedsim finished lacks the keys added since
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    if summary.get("status") == "completed":
        return summary
    checkpoint = load_checkpoint(run_dir)
    if checkpoint.round >= config.num_rounds:
        return _open_run_dir(Path(run_dir), config, checkpoint.round).finish()
    return _execute(config, Path(run_dir), progress, checkpoint)


def _check_before_ray(config: Config) -> None:
    """Everything that can be refused before Ray starts: the values, the split (a bad
    one fails here), ``vectorize = "on"`` where it cannot be met, and the resources."""
    _check_engine(config, *_check_values(config))


def _check_values(config: Config) -> tuple[Dataset, list[ClientSplit]]:
    """The checks that need no torch: the values, the split, the model's input size,
    the least-squares head's labels and the resources; returns the data and the split."""
    validate(config)
    splits = client_splits(config)
    data = load_dataset(config)
    model_name(data, config.model)
    if config.head_solver == "lstsq" and not np.issubdtype(data.y.dtype, np.floating):
        raise ConfigError(f"head-solver = 'lstsq' fits a regression head by least squares, but "
                          f"dataset = {config.dataset!r} has class labels; use head-solver = 'sgd'")
    _check_local_resources(config)
    return data, splits


def _engine_cannot_refuse(config: Config) -> bool:
    """Whether :func:`_check_engine` passes whenever :func:`_check_values` did: a built-in
    algorithm (no plugins) other than FedALA (its ``fedala-layers`` is checked against the
    built model), and no ``vectorize = "on"`` (checked against the model and phases)."""
    return (not config.plugins and config.vectorize != "on" and config.strategy != "fedala"
            and config.strategy in BUILTIN_NAMES["strategy"])


def _check_engine(config: Config, data: Dataset, splits: list[ClientSplit]) -> None:
    """The checks that build the model (torch): its declared phases on it, ``vectorize =
    "on"``, the strategy's class; then the strategy's advice (warnings)."""
    engine_paths(config, data)
    from strategies.base import CohortFedAvg

    cls = strategy_class(config.strategy)
    if not (isinstance(cls, type) and issubclass(cls, CohortFedAvg)):
        raise ConfigError(f"strategy {config.strategy!r}: its server class {cls!r} must subclass "
                          f"strategies.base.CohortFedAvg (see README, Adding an algorithm)")
    advice = getattr(cls, "advice", None)  # a plugin's own class may lack it
    for text in advice(config, [data.y[s.train] for s in splits]) if advice else []:
        warnings.warn(text, UserWarning, stacklevel=2)


def _execute(config: Config, out: Path, progress: bool, checkpoint: Any) -> dict[str, Any]:
    data, splits = _check_values(config)
    early = _engine_cannot_refuse(config)  # then Ray starts while torch loads (fedsim/ray_thread.py)
    if not early:
        _check_engine(config, data, splits)
    writer = _open_run_dir(out, config, checkpoint.round if checkpoint else None)
    with contextlib.ExitStack() as teardown:
        thread = RayThread(_ray_init(config)) if early else None
        teardown.callback(_stop_ray, thread)  # also after a Ctrl-C before the try below
        with stop_on_signals():
            try:
                _quiet(config.verbose)
                if thread is not None:
                    _check_engine(config, data, splits)  # meanwhile: torch, the model, the strategy
                    _import_simulation()
                num_nodes = _start_ray(config, thread)
                if STOP.is_set():
                    raise Stopped
                _simulate(config, writer, num_nodes, progress, checkpoint)
            except BaseException as exc:  # noqa: BLE001 - recorded, then re-raised
                if STOP.is_set() or isinstance(exc, KeyboardInterrupt):
                    summary = writer.finish(error=f"interrupted ({stopped_by()})", status="interrupted")
                    raise RunInterrupted(_interrupted_message(summary, config, out), exit_code()) from None
                message = f"{type(exc).__name__}: {exc}"
                writer.finish(error=message)
                if isinstance(exc, ConfigError):
                    raise
                raise RunFailed(message) from exc
            finally:
                _stop_ray(thread)
    return writer.finish()


def _open_run_dir(out: Path, config: Config, resume_after: int | None) -> RunWriter:
    """The run directory's writer; a directory that cannot be created or written is a
    ConfigError naming ``--out``, the path and the reason (before Ray starts)."""
    try:
        return RunWriter(out, config.to_dict(), resume_after)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise ConfigError(f"--out {str(out)!r}: cannot write the run directory: {reason}{where}") from None


def _interrupted_message(summary: dict[str, Any], config: Config, out: Path) -> str:
    done = summary["rounds_completed"]
    when = f"after round {done} of {config.num_rounds}" if done else "before the first round ended"
    text = f"interrupted {when}; partial results in {out}"
    if (out / "checkpoint.npz").is_file():
        text += f" (continue with: fedsim resume {out})"
    return text


@contextlib.contextmanager
def own_warnings_only() -> Iterator[None]:
    """Flower's and Ray's warnings (deprecation notices of the simulation API) hidden
    while a simulation runs; a UserWarning of fedsim, a strategy or a plugin (e.g. KD3A's
    empty knowledge vote) is still shown."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.filterwarnings("default", category=UserWarning)
        warnings.filterwarnings("ignore", module=r"(flwr|ray|grpc)(\.|$)")
        yield


def _run_simulation(server_app: Any, config: Config, num_nodes: int) -> None:
    """Flower's simulation of ``server_app`` with our ClientApp on ``num_nodes`` nodes,
    actors sized by ``config``'s resources, replies pumped as they arrive."""
    from flwr.simulation import run_simulation

    from clients.app import app
    from fedsim.placement import PlacedClientApp

    backend_config = {
        "client_resources": {
            "num_cpus": config.client_num_cpus,
            "num_gpus": config.client_num_gpus,
        },
        "init_args": {"log_to_driver": config.verbose},
    }
    with own_warnings_only(), fast_message_pump(), tracked_backends():
        run_simulation(
            server_app=server_app,
            client_app=PlacedClientApp(app),  # replies say which actor ran them
            num_supernodes=num_nodes,
            backend_config=backend_config,  # type: ignore[arg-type]
            verbose_logging=config.verbose,
        )


def _simulate(
    config: Config, writer: RunWriter, num_nodes: int, progress: bool, checkpoint: Any
) -> None:
    from fedsim.placement import describe
    from fedsim.server import make_server_app

    _run_simulation(make_server_app(config, writer, num_nodes, _print_progress if progress else None,
                                    checkpoint), config, num_nodes)
    if progress and "placement" in writer.extra:
        print(describe(writer.extra["placement"]), file=sys.stderr, flush=True)
    if len(writer.rows) < config.num_rounds:
        raise RunFailed(f"the simulation stopped after {len(writer.rows)} of {config.num_rounds} rounds")


def _simulate_many(
    jobs: list[tuple[Config, Path]], num_nodes: int, progress: bool, announce: Any, indices: list[int],
) -> list[dict[str, Any]]:
    """One Flower simulation whose ServerApp runs ``jobs`` one after another."""
    from flwr.serverapp import ServerApp

    from fedsim.server import run_rounds

    summaries: list[dict[str, Any]] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Any, context: Any) -> None:
        for index, (config, out) in zip(indices, jobs):
            if announce:
                announce(index, config, out)
            try:
                writer = _open_run_dir(out, config, None)
            except ConfigError as exc:
                summaries.append({"status": "failed", "error": str(exc)})
                continue
            try:
                run_rounds(grid, config, writer, num_nodes, _print_progress if progress else None)
                if len(writer.rows) < config.num_rounds:
                    raise RunFailed(f"the run stopped after {len(writer.rows)} of {config.num_rounds} rounds")
            except Stopped:
                summaries.append(writer.finish(error=f"interrupted ({stopped_by()})", status="interrupted"))
                raise
            except Exception as exc:  # noqa: BLE001 - recorded; the next run starts
                summaries.append(writer.finish(error=f"{type(exc).__name__}: {exc}"))
                continue
            summaries.append(writer.finish())

    _run_simulation(server_app, jobs[0][0], num_nodes)  # the group shares these resources
    if STOP.is_set():
        raise Stopped
    missing = len(jobs) - len(summaries)  # the simulation ended early (e.g. its ServerApp raised)
    return summaries + [{"status": "failed", "error": "the simulation ended before this run"}] * missing


def _check_local_resources(config: Config) -> None:
    """Resource requests Ray would hang on (no actor fits) and cluster addresses nothing
    answers at (Ray would wait minutes) are refused up front."""
    address = config.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        _check_reachable(address)
        return  # resources are checked against the cluster once attached
    cpus = os.cpu_count() or 1
    if config.client_num_cpus > cpus:
        raise ConfigError(
            f"client-num-cpus = {config.client_num_cpus} exceeds the {cpus} CPUs of this "
            f"machine; use a value in (0, {cpus}]"
        )
    if config.client_num_gpus > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise ConfigError(
                f"client-num-gpus = {config.client_num_gpus} but this machine has no CUDA GPU; "
                f"use client-num-gpus = 0"
            )
        if config.client_num_gpus > gpus:
            raise ConfigError(
                f"client-num-gpus = {config.client_num_gpus} exceeds the {gpus} GPU(s) here"
            )


def _check_reachable(address: str) -> None:
    """A TCP connection to ``host:port`` (``ray://`` allowed) must open within 5 s."""
    import socket

    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray-address = {address!r}: expected HOST:PORT (or ray://HOST:PORT, auto)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(
            f"ray-address = {address!r}: nothing answers at {host}:{port} ({exc}); start the "
            f"cluster (`ray start --head`) or leave ray-address empty for a local one"
        ) from None


def _start_ray(config: Config, thread: RayThread | None = None) -> int:
    """Start (or attach to) Ray, or wait for ``thread`` to have done so, check the
    resources against it, and return the number of Flower nodes: ``num-nodes``, or one
    per actor that fits (at most one per client)."""
    if thread is None:
        _init_ray(config)
    else:
        thread.wait()
        rearm_sigterm()  # Ray's core worker (C++) set its own SIGTERM handler, even from a thread
    return _nodes_for(config)


def _import_simulation() -> None:
    """Import what the simulation runs (Flower's engine, the ClientApp, the server) now,
    while Ray starts, rather than after it."""
    import flwr.simulation  # noqa: F401

    import clients.app  # noqa: F401
    import fedsim.server  # noqa: F401


# Settings of a local Ray fedsim starts (a cluster keeps its own):
# - a train message carries one model and goes to an actor inside the task when it is
#   smaller than max_direct_call_object_size, instead of through Ray's object store (Ray's
#   default limit: 100 KiB). The object store costs a round trip to the raylet per message
#   (3-5 ms of the driver's submit): FedAvg on digits (a 104 KB model) took 59-60 ms a round
#   with 100 KiB and 49-51 ms with 1 MiB (alternating runs, 60 rounds). A node's reply (a
#   cohort's models, several MB) still goes through the object store, which is cheaper for
#   it: a 20 MB limit that inlined replies too cost 90.6 against 84.1 ms a round (FedRep).
# - every worker imports fedsim.worker_preload first: Flower's actor class then imports
#   without Flower's whole simulation engine, ~0.8 s less CPU per actor while they start
#   (process start to exit of a 3-round FedRep digits run: median 7.35 -> 6.62 s, 5
#   alternating runs).
# - no task events: they feed the dashboard's task listings and timelines, which fedsim
#   does not start, and the driver flushes them at shutdown. The end of a run (its last
#   round to the return of run()) took 0.40 s and takes 0.17-0.39 s, median 0.20
#   (FedRep digits, 5 alternating runs).
# - a process that connects to a socket of the raylet or of its object store before the
#   socket listens tries again 20 ms later, 500 times, instead of 1 s later, 10 times
#   (the same 10 s in all): the raylet's first connection to its own object store missed
#   it in 9 of 45 starts on the 2-core box and lost a second each time (its log: 1.00 s
#   between the store's start and the object manager's).
LOCAL_RAY_CONFIG = {"max_direct_call_object_size": 2**20,
                    "preload_python_modules": ["fedsim.worker_preload"],
                    "task_events_report_interval_ms": 0,
                    "raylet_client_connect_timeout_milliseconds": 20,
                    "raylet_client_num_connect_attempts": 500}


def _init_ray(config: Config) -> None:
    """Start (or attach to) Ray on this thread."""
    _ray_init(config)()
    rearm_sigterm()


def _ray_init(config: Config) -> Callable[[], None]:
    """Prepare this process's environment (its Ray processes inherit ``PYTHONPATH``) and
    return the call that starts or attaches to Ray (a ConfigError if it cannot)."""
    import ray
    from ray.util.debug import log_once

    log_once("ray_accel_env_var_override_on_zero")  # ray.init's FutureWarning, a tip, said "once" already
    # Without an address fedsim starts its own local Ray: ray.init() with none would attach to
    # whatever cluster `ray start` (or a test's Cluster) last left running on this machine.
    address = config.ray_address or os.environ.get("RAY_ADDRESS") or "local"
    pythonpath = os.pathsep.join([p for p in sys.path if p] + [os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = pythonpath
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats reporting thread
    if address == "local":  # its processes inherit os.environ; fedsim's settings and services
        lean, options = lean_local_ray(config.verbose), {"_system_config": LOCAL_RAY_CONFIG}
    else:  # a cluster keeps its own settings; its workers get the path and the telemetry switch
        env_vars = {"PYTHONPATH": pythonpath, "FLWR_TELEMETRY_ENABLED": "0"}
        lean, options = contextlib.nullcontext(), {"runtime_env": {"env_vars": env_vars}}

    def init() -> None:
        try:
            with lean:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=config.verbose,
                    logging_level=logging.INFO if config.verbose else logging.ERROR,
                    **options,
                )
        except Exception as exc:
            raise ConfigError(f"ray-address = {address!r}: cannot start or attach to Ray: {exc}") from exc

    return init


def _nodes_for(config: Config) -> int:
    import ray

    actors = actors_that_fit(config.client_num_cpus, config.client_num_gpus, _node_resources())
    if not actors:
        resources = ray.cluster_resources()
        cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
        raise ConfigError(
            f"client-num-cpus = {config.client_num_cpus}, client-num-gpus = "
            f"{config.client_num_gpus}: the Ray cluster has {cpus} CPUs and {gpus} GPUs "
            f"(declared ones count), so no client actor fits on any of its nodes"
        )
    return min(config.num_nodes or actors, config.num_clients)


def _node_resources() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node.get("Alive") and node["Resources"]]


def actors_that_fit(num_cpus: float, num_gpus: float, nodes: list[dict[str, float]]) -> int:
    """How many actors of ``num_cpus`` CPUs and ``num_gpus`` GPUs Flower's pool creates:
    counted node by node (an actor does not span nodes), as Flower does. GPUs may be
    declared ones (``ray start --num-gpus``): Ray schedules them as logical resources."""
    total = 0
    for resources in nodes:
        actors = int(resources.get("CPU", 0.0) / num_cpus)
        if num_gpus > 0:
            actors = min(actors, int(resources.get("GPU", 0.0) / num_gpus))
        total += actors
    return total


def _stop_ray(thread: RayThread | None = None) -> None:
    """Shut Ray down (once ``thread``'s start, if any, has returned), then let
    ``thread`` end."""
    import ray

    if thread is not None:
        thread.wait(reraise=False)  # e.g. Ctrl-C or a refused check while Ray started
    if ray.is_initialized():
        ray.shutdown()
    if thread is not None:
        thread.release()


def _quiet(verbose: bool) -> None:
    # Client errors are reported by fedsim itself, once; Flower would log them twice more.
    level = logging.INFO if verbose else logging.CRITICAL
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(level)


def _print_progress(row: dict[str, Any], config: Config) -> None:
    parts = [f"round {row['round']:>4}/{config.num_rounds}"]
    for key in ("train_loss", "accuracy", "loss", "distance"):
        if row.get(key) is not None:
            parts.append(f"{key.replace('_', '-')} {row[key]:.4g}")
    parts.append(f"{row['round_seconds']:.2f} s")
    if row.get("notice"):  # e.g. KD3A: the vote accepted no target sample
        parts.append(row["notice"])
    print("  ".join(parts), file=sys.stderr, flush=True)
