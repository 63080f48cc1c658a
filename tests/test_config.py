import tomllib
from pathlib import Path

import pytest

from fedsim.config import Config, ConfigError, flwr_config_section
from fedsim.validate import config_from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_follow_fedrep_recipe():
    c = load_config()
    assert (c.strategy, c.head_epochs, c.body_epochs, c.lr, c.momentum) == ("fedrep", 10, 1, 0.01, 0.5)
    assert (c.weight_decay, c.batch_size, c.fraction_train) == (1e-4, 10, 0.1)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('strategy = "fedavg"\nnum-rounds = 7\nlr = 1\n')
    c = load_config(path, ["num-rounds=9", "verbose=true", "fraction-train=0.5"])
    assert (c.strategy, c.num_rounds, c.lr, c.verbose, c.fraction_train) == ("fedavg", 9, 1.0, True, 0.5)
    assert config_from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["num-round=3"], "unknown config key 'num-round'; did you mean 'num-rounds'?"),
        (["num-rounds=three"], "num-rounds = 'three': expected int"),
        (["num-rounds=0"], "num-rounds = 0: must be >= 1"),
        (["num-clients=-2"], "num-clients = -2: must be >= 1"),
        (["lr=0"], "lr = 0.0: must be > 0"),
        (["fraction-train=1.5"], "fraction-train = 1.5: must be in (0, 1]"),
        (["fraction-train=0"], "fraction-train = 0.0: must be in (0, 1]"),
        (["client-num-cpus=0"], "client-num-cpus = 0.0: must be > 0"),
        (["client-num-gpus=-1"], "client-num-gpus = -1.0: must be >= 0"),
        (["strategy=fedrpe"], "strategy = 'fedrpe' is unknown; did you mean 'fedrep'?"),
        (["partitioner=shard"], "partitioner = 'shard' is unknown; did you mean 'shards'?"),
        (["dataset=cifar"], "dataset = 'cifar' is unknown"),
        (["lr"], "--set 'lr': expected key=value"),
        (["lr=nan"], "lr = nan: must be a finite number"),
        (["verbose=maybe"], "verbose = 'maybe': expected bool"),
        (["partitioner=file"], "partitioner = 'file' needs split-file"),
        (["partitioner=file", "split-file=/nonexistent.json"],
         "split-file = '/nonexistent.json': no such file"),
        (["plugins=no_such_module_xyz"], "plugins: cannot import 'no_such_module_xyz'"),
    ],
)
def test_bad_values_are_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_toml_types_are_checked(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('num-rounds = "10"\n')
    with pytest.raises(ConfigError, match="num-rounds = '10': expected int, got str"):
        load_config(path)
    path.write_text("num-rounds = true\n")
    with pytest.raises(ConfigError, match="expected int, got bool"):
        load_config(path)
    path.write_text("num-rounds = [\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_flwr_run_config_declares_every_key_with_the_default():
    text = (ROOT / "pyproject.toml").read_text()
    declared = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    assert declared == Config().to_dict()
    assert flwr_config_section() in text  # regenerate with the command in its docstring


def test_shipped_configs_are_valid():
    for path in (ROOT / "experiments").glob("*.toml"):
        load_config(path)


def test_integer_lists_on_the_command_line(capsys):
    import argparse

    from fedsim.cli import int_list, main

    assert int_list("0, 1,2,") == [0, 1, 2]
    for bad in ("", ",", "0,x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected comma-separated integers"):
            int_list(bad)
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", "--seeds", "0,one"])
    assert exit_info.value.code == 2
    assert "argument --seeds: '0,one': expected comma-separated integers" in capsys.readouterr().err


def test_a_set_key_that_the_chosen_partitioner_never_reads_is_named_in_a_warning(monkeypatch):
    """classes-per-client with the iid domain split used to be ignored without a word."""
    import warnings

    from fedsim.data import PARTITIONERS

    def said(overrides: str) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            load_config(None, overrides.split())
        return [str(w.message) for w in caught]

    assert said("dataset=digit5-synth partitioner=domain classes-per-client=3") == [
        "classes-per-client = 3 has no effect here: partitioner = 'domain' with domain-split = 'iid' "
        "does not read it (read by partitioner shards or rotated, or domain with domain-split = 'shards')"]
    assert said("dataset=digit5-synth partitioner=domain domain-split=shards classes-per-client=3") == []
    assert said("partitioner=shards dirichlet-alpha=0.1 size-sigma=2") == [
        "dirichlet-alpha = 0.1 has no effect here: partitioner = 'shards' does not read it (read by "
        "partitioner dirichlet)",
        "size-sigma = 2.0 has no effect here: partitioner = 'shards' does not read it (read by "
        "partitioner size)"]
    assert said("partitioner=dirichlet dirichlet-alpha=0.1") == []
    assert said("partitioner=shards") == []  # defaults are not the user's doing
    monkeypatch.setitem(PARTITIONERS, "mine", lambda labels, n, rng, config: [])
    assert said("partitioner=mine dirichlet-alpha=0.1") == []  # a plugin may read any key


def test_relative_paths_are_kept_absolute_so_resume_works_from_anywhere(tmp_path, monkeypatch):
    """config.json keeps plugins files, split-file and data-root as absolute paths: the
    `fedsim resume DIR` a run prints must work from any directory."""
    (tmp_path / "abs_path_plugin.py").write_text("X = 1\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "split.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    config = load_config(None, ["plugins=abs_path_plugin.py", "data-root=data", "split-file=split.json"])
    assert config.plugins == str(tmp_path / "abs_path_plugin.py")
    assert (config.data_root, config.split_file) == (str(tmp_path / "data"), str(tmp_path / "split.json"))
    assert load_config(None, ["plugins=json"]).plugins == "json"  # a module name stays a name


def test_flwr_run_applies_the_strategy_and_dataset_defaults_as_fedsim_run_does():
    """pyproject.toml gives every key fedsim's generic default, so under `flwr run` the
    defaults of the strategy (KD3A's optimiser, fedrep-groups' affinity-every) and of the
    dataset (linear-regression's split and solver) fill the keys still at that value."""
    from fedsim.validate import flwr_run_values

    declared = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    cases = [{"strategy": "kd3a", "dataset": "digit5-synth", "partitioner": "domain",
              "target-domain": "mnistm", "num-clients": 5},
             {"dataset": "linear-regression"}, {"strategy": "fedrep-groups"},
             {"strategy": "kd3a", "dataset": "digit5-synth", "partitioner": "domain",
              "target-domain": "mnistm", "num-clients": 5, "lr": 0.2}]
    for changes in cases:
        sets = [f"{k}={v}" for k, v in changes.items()]
        expected = load_config(None, sets)
        assert config_from_dict(flwr_run_values({**declared, **changes})) == expected, changes


def test_a_split_file_the_partitioner_does_not_read_is_only_warned_about():
    with pytest.warns(UserWarning, match='split-file = "/nonexistent.json" has no effect here'):
        load_config(None, ["split-file=/nonexistent.json"])
