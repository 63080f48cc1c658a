"""The package a Ray worker registers without running its ``__init__`` (fedsim.worker_preload)."""

import importlib
import subprocess
import sys
import textwrap

from fedsim.simulation import LOCAL_RAY_CONFIG
from fedsim.worker_preload import defer_package_init


def test_a_deferred_package_runs_its_init_only_when_something_it_defines_is_looked_up(tmp_path, monkeypatch):
    package = tmp_path / "heavy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import sys\nsys.modules[__name__].RAN = True\nVALUE = 7\n")
    (package / "light.py").write_text("NAME = 'light'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        defer_package_init("heavy_pkg")
        module = sys.modules["heavy_pkg"]
        assert importlib.import_module("heavy_pkg.light").NAME == "light"
        assert "RAN" not in module.__dict__  # the submodule imported, the __init__ did not run
        assert not hasattr(module, "__wrapped__")  # a probe does not run it either
        from heavy_pkg import VALUE  # noqa: PLC0415 - the first lookup runs it

        assert VALUE == 7 and module.RAN is True
        defer_package_init("heavy_pkg")  # already imported: left alone
        assert sys.modules["heavy_pkg"] is module
    finally:
        for name in ("heavy_pkg", "heavy_pkg.light"):
            sys.modules.pop(name, None)


def test_a_local_ray_worker_imports_flowers_actor_without_the_simulation_engine():
    assert LOCAL_RAY_CONFIG["preload_python_modules"] == ["fedsim.worker_preload"]
    code = textwrap.dedent("""
        import sys
        import fedsim.worker_preload
        from flwr.simulation.ray_transport.ray_actor import ClientAppActor
        print("flwr.simulation.app" in sys.modules)
        from flwr.simulation import run_simulation
        print("flwr.simulation.app" in sys.modules, callable(run_simulation))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True", "True"]
