"""Ray's dashboard agent as Ray runs it (``python -u ray/dashboard/agent.py ARGS``), started
as ``python -u fedsim/ray_agent.py ray/dashboard/agent.py ARGS`` by
:func:`fedsim.lean_ray.lean_local_ray`, importing only the dashboard modules that can
define an agent module.

The agent looks for its modules among the direct subclasses of ``DashboardAgentModule``
after importing *every* module under ``ray.dashboard.modules``; without Ray's dashboard
dependencies (fedsim installs none) it then keeps none of them ("Loaded 0 modules", in its
log). The imports cost 0.35–0.51 s of CPU on the 2-core box, and the raylet registers
with the GCS only once the agent is up, so they delay ``ray.init``. A module can only
subclass ``DashboardAgentModule`` if its source names it: 6 of the package's files do,
found by reading them (5–7 ms) and imported in 0.13–0.19 s, with the same modules loaded.
Files that cannot be read (compiled only) are imported as before.
"""

import os
import sys


def _mentions(info, name: str) -> bool:
    """Whether the source file of ``pkgutil.ModuleInfo`` ``info`` contains ``name``
    (True where it cannot be read)."""
    path = os.path.join(getattr(info.module_finder, "path", ""), info.name.rpartition(".")[2] + ".py")
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            return name in file.read()
    except OSError:
        return True


def _only_mentioning_modules(get_all_modules):
    """``ray.dashboard.utils.get_all_modules``, walking only the packages and the modules
    whose source names the module type."""
    import pkgutil

    def get_modules(module_type):
        walk = pkgutil.walk_packages

        def walk_mentioning(*args, **kwargs):
            for info in walk(*args, **kwargs):
                if info.ispkg or _mentions(info, module_type.__name__):
                    yield info

        pkgutil.walk_packages = walk_mentioning
        try:
            return get_all_modules(module_type)
        finally:
            pkgutil.walk_packages = walk

    return get_modules


def main() -> None:
    """Run the agent script ``sys.argv[1]`` with the remaining arguments, as Python would
    run it; with the narrower module search where Ray still has the function it patches."""
    agent = sys.argv.pop(1)
    sys.path[0] = os.path.dirname(os.path.realpath(agent))  # the script's directory first
    import runpy

    try:
        import ray.dashboard.utils as utils

        utils.get_all_modules = _only_mentioning_modules(utils.get_all_modules)
    except (ImportError, AttributeError):  # another Ray: its agent as it is
        pass
    runpy.run_path(agent, run_name="__main__")


if __name__ == "__main__":
    main()
