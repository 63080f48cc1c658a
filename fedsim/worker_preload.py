"""Imported by every worker of a local Ray that fedsim starts, before its first task (Ray's
``preload_python_modules``, see :data:`fedsim.simulation.LOCAL_RAY_CONFIG`).

Flower's client actor class lives in ``flwr.simulation.ray_transport.ray_actor``, and
importing it first runs ``flwr/simulation/__init__.py``, which imports the driver's side of
the simulation engine (``run_simulation``, the in-memory SuperLink and grid): ~0.8 s of CPU
in every actor that never uses it, while the actors start on the same cores. Here that
package is registered without running its ``__init__``: its submodules (the actor class)
import as usual, and the first lookup of anything the ``__init__`` defines runs it then,
so ``from flwr.simulation import run_simulation`` still works in a worker.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any


def defer_package_init(name: str) -> None:
    """Register package ``name`` (its parent is imported) without executing its ``__init__``
    until an attribute it does not have yet is looked up (PEP 562's module ``__getattr__``).
    Nothing happens if it is already imported or cannot be found."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("__") and attribute != "__all__":  # probes (inspect, copy)
            raise AttributeError(attribute)
        del module.__dict__["__getattr__"]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return getattr(module, attribute)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


defer_package_init("flwr.simulation")
