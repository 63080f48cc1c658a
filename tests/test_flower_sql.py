"""Flower's SQL-backed state, imported only when something builds one (fedsim.flower_sql)."""

import subprocess
import sys
import textwrap


def _run(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_simulation_engine_imports_without_sqlalchemy_and_a_database_file_still_gets_sql_state(tmp_path):
    out = _run(f"""
        import sys
        import fedsim.simulation
        from flwr.simulation import run_simulation
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
        print("sqlalchemy" in sys.modules, "alembic" in sys.modules)
        from flwr.server.superlink.linkstate.linkstate_factory import LinkStateFactory
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
        memory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory())
        print(type(memory.state()).__name__, "sqlalchemy" in sys.modules)
        db = r"{tmp_path}"
        store = ObjectStoreFactory(db + "/store.db")
        files = LinkStateFactory(db + "/state.db", NoOpFederationManager(), store)
        state = files.state()
        print(type(state).__name__, type(state).__module__, "sqlalchemy" in sys.modules)
        import flwr.server.superlink.linkstate.sql_linkstate as module
        print(module.SqlLinkState is type(state), sys.modules[module.__name__] is module)
        store = ObjectStoreFactory(db + "/other.db").store()
        print(type(store).__name__)
    """)
    assert out == ["False", "False", "InMemoryLinkState", "False",
                   "SqlLinkState", "flwr.server.superlink.linkstate.sql_linkstate", "True",
                   "True", "True", "SqlObjectStore"]


def test_any_other_name_of_a_stand_in_loads_the_real_module_and_imported_modules_are_left_alone():
    out = _run("""
        import sys
        from fedsim.flower_sql import SQL_CLASSES, defer_sql_state
        print(len(defer_sql_state()) == len(SQL_CLASSES), len(defer_sql_state()))
        from flwr.supercore.object_store import sql_object_store
        print("sqlalchemy" in sys.modules)
        print(callable(sql_object_store.SqlMixin), "sqlalchemy" in sys.modules)
        print(isinstance(sys.modules["flwr.supercore.object_store.sql_object_store"].SqlObjectStore, type))
    """)
    assert out == ["True", "0", "False", "True", "True", "True"]
