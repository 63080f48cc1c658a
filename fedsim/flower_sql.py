"""Flower's SQL-backed state, imported only if something builds one.

Importing Flower's simulation engine (its in-memory SuperLink and grid) also imports the
SQL versions of its link state and object store, and with them SQLAlchemy, Alembic and
Flower's table schemas: 0.5–0.9 s of the driver's start-up (measured on the 2-core box,
after torch and Ray), while the driver runs alone before Ray starts. A simulation keeps
both in memory (``run_simulation`` builds its factories on ``FLWR_IN_MEMORY_DB_NAME``), and
Flower 1.41 only ever *calls* the two SQL classes, in those factories, when given a
database file. So the driver registers the two modules as stand-ins whose class, when
called, imports the real module and builds the real object; any other name looked up on
a stand-in imports the real module too.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

SQL_CLASSES = {
    "flwr.server.superlink.linkstate.sql_linkstate": "SqlLinkState",
    "flwr.supercore.object_store.sql_object_store": "SqlObjectStore",
}
_STAND_INS: dict[str, types.ModuleType] = {}
_LOCK = threading.RLock()  # a real module's import may build another stand-in's class


def defer_sql_state() -> list[str]:
    """Register a stand-in for each module of :data:`SQL_CLASSES` that is not imported
    yet and exists in the installed Flower; returns the names registered. Must run before
    Flower's state packages are imported (they import these modules)."""
    spec = importlib.util.find_spec("flwr")  # finds the package without importing it
    roots = list(spec.submodule_search_locations or []) if spec else []
    deferred = []
    for name, class_name in SQL_CLASSES.items():
        relative = Path(*name.split(".")[1:]).with_suffix(".py")
        if name in sys.modules or not any((Path(root) / relative).is_file() for root in roots):
            continue
        stand_in = types.ModuleType(name, f"Stand-in for {name}: see fedsim.flower_sql.")
        setattr(stand_in, class_name, _builder(name, class_name))
        stand_in.__getattr__ = _lookup(name)  # type: ignore[method-assign]
        sys.modules[name] = _STAND_INS[name] = stand_in
        deferred.append(name)
    return deferred


def _builder(module: str, class_name: str) -> Callable[..., Any]:
    def build(*args: Any, **kwargs: Any) -> Any:
        return getattr(load_real(module), class_name)(*args, **kwargs)

    build.__name__ = build.__qualname__ = class_name
    build.__doc__ = f"Imports {module} and builds its {class_name} (fedsim.flower_sql)."
    return build


def _lookup(module: str) -> Callable[[str], Any]:
    def __getattr__(attribute: str) -> Any:
        if attribute.startswith("__"):  # probes (copy, inspect, pickle)
            raise AttributeError(attribute)
        return getattr(load_real(module), attribute)

    return __getattr__


def load_real(module: str) -> types.ModuleType:
    """The real module behind a stand-in (imported now if it is not yet)."""
    with _LOCK:
        if module in _STAND_INS and sys.modules.get(module) is _STAND_INS[module]:
            del sys.modules[module]
            real = importlib.import_module(module)
            parent, _, child = module.rpartition(".")
            setattr(sys.modules[parent], child, real)
        return sys.modules.get(module) or importlib.import_module(module)
