"""The ServerApp for ``flwr run .`` (components in pyproject.toml).

The run config comes from ``[tool.flwr.app.config]`` (plus ``--run-config``); the node
count and per-node resources come from the Flower federation. Outputs go to
``runs/flwr-<strategy>-<dataset>-<time>`` under the ServerApp's working directory.
``client_app`` is the ClientApp whose replies say which Ray actor ran them (``placement``
in summary.json).
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from clients.app import app
from fedsim.history import RunWriter
from fedsim.placement import PlacedClientApp
from fedsim.server import run_rounds
from fedsim.validate import config_from_dict, flwr_run_values

server_app = ServerApp()
client_app = PlacedClientApp(app)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    from fedsim.cli import _report
    from fedsim.simulation import _print_progress, default_out_dir

    config = config_from_dict(flwr_run_values(dict(context.run_config)))
    out = default_out_dir(config)
    out = out.with_name("flwr-" + out.name)
    writer = RunWriter(out, config.to_dict())
    try:
        run_rounds(grid, config, writer, num_nodes=config.num_nodes, progress=_print_progress)
    except BaseException as exc:
        writer.finish(error=f"{type(exc).__name__}: {exc}")
        raise
    _report(writer.finish(), str(out))  # final accuracy, or final loss for regression
