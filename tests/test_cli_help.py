"""Every config key is declared once, with a meaning and (for choice keys) its allowed
values, and `--help`, the README's table and the error messages read them from there
(issue 16, item 4). fedsim/config.py is a leaf."""

import ast
import re
from dataclasses import fields
from pathlib import Path

import pytest

from fedsim.cli import COMPARE_SEEDS, COMPARE_STRATEGIES, main
from fedsim.config import REGISTRY, Config, ConfigError, declared_choices, key_of, meaning, toml_value
from fedsim.data import PARTITIONERS, register_partitioner
from fedsim.validate import REGISTRIES, choices, config_table, load_config, readme_table

ROOT = Path(__file__).resolve().parents[1]
KEYS = [key_of(f.name) for f in fields(Config)]


def test_config_is_a_leaf():
    tree = ast.parse((ROOT / "fedsim" / "config.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in imported if m.split(".")[0] in ("fedsim", "clients", "strategies")]


def test_every_key_has_a_one_line_meaning_and_registry_keys_a_registry():
    for key in KEYS:
        assert meaning(key).strip() and "\n" not in meaning(key), key
    assert {k for k in KEYS if declared_choices(k) == REGISTRY} == set(REGISTRIES)
    assert choices("vectorize") == ["auto", "on", "off"] and "vectorized" in meaning("vectorize")
    assert "cnn32bn" in choices("model") and "kd3a" in choices("strategy")


def _help(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    return re.sub(r"\s+", " ", capsys.readouterr().out)


def test_run_help_lists_every_key_with_default_meaning_and_choices(capsys):
    text = _help(capsys, "run")
    for key, value in Config().to_dict().items():
        assert f" {key} = {toml_value(value)} " in text, key
        assert re.sub(r"\s+", " ", meaning(key)) in text, key
        for allowed in choices(key) or []:
            assert allowed in text, (key, allowed)
    assert 'model = "auto"' in text and "cnn32bn" in text


def test_a_registered_name_shows_in_help_and_errors(capsys, monkeypatch):
    monkeypatch.setitem(PARTITIONERS, "two-groups", None)  # as register_partitioner does
    assert "two-groups" in _help(capsys, "run")
    with pytest.raises(ConfigError, match=r"partitioner = 'two-grups' is unknown; did you mean "
                                          r"'two-groups'\? \(choose from: .*two-groups"):
        load_config(None, ["partitioner=two-grups"])
    assert register_partitioner  # the public way; the test avoids leaving a name behind


@pytest.mark.parametrize("key, bad", [("model", "cnn"), ("vectorize", "yes"), ("strategy", "fedrpe")])
def test_choice_errors_list_the_same_choices_as_the_help(key, bad):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{key}={bad}"])
    assert str(err.value).endswith(f"(choose from: {', '.join(choices(key))})")


def test_compare_help_names_the_default_strategies_and_seeds(capsys):
    text = _help(capsys, "compare")
    assert f"(default: {COMPARE_STRATEGIES})" in text and f"(default: {COMPARE_SEEDS})" in text


def test_readme_table_is_generated_from_the_declarations():
    assert readme_table((ROOT / "README.md").read_text()) == config_table(), (
        "README's config table drifted from the declarations: regenerate it with "
        'python -c "import fedsim.validate as v; v.write_readme_table()"')
