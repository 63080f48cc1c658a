"""Bad input found by trying fedsim as a new user: each is refused before Ray starts with
exit code 2 and one line naming the bad value and what is allowed (no traceback)."""

import pytest

from fedsim.cli import main

SMALL = ["--set", "num-rounds=1", "--set", "num-clients=4", "--quiet"]
KD3A = ["--set", "strategy=kd3a", "--set", "dataset=digit5-synth", "--set", "partitioner=domain",
        "--set", "num-clients=5", "--set", "target-domain=mnistm", "--set", "fraction-train=1.0"]


def _refused(capsys, argv):
    import ray

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not ray.is_initialized()
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(("changes", "message"), [
    (["model=cnn28"], "fedsim: error: model = 'cnn28' needs C×28×28 images, the dataset has inputs of "
                      "shape (64,); use model = 'auto' or 'mlp'"),
    (["model=cnn32bn"], "fedsim: error: model = 'cnn32bn' needs C×32×32 images"),
    (["strategy=fedala", "fedala-layers=10"], "fedsim: error: fedala-layers = 10: must be in [1, 3]"),
    (["head-solver=lstsq"], "fedsim: error: head-solver = 'lstsq' fits a regression head by least "
                            "squares, but dataset = 'digits' has class labels; use head-solver = 'sgd'"),
    (["dataset=linear-regression", "partitioner=dirichlet"],
     "fedsim: error: partitioner 'dirichlet' deals clients classes, but dataset 'linear-regression' "
     "has real-valued targets (regression); use iid or size"),
])
def test_a_run_that_cannot_work_on_its_data_is_refused(tmp_path, capsys, changes, message):
    argv = ["run", *SMALL, *[a for c in changes for a in ("--set", c)], "--out", str(tmp_path / "r")]
    assert _refused(capsys, argv).startswith(message)


def test_a_falling_kd3a_gate_is_refused(tmp_path, capsys):
    argv = ["run", *SMALL, *KD3A, "--set", "kd3a-gate-start=0.99", "--set", "kd3a-gate-end=0.5",
            "--out", str(tmp_path / "r")]
    assert _refused(capsys, argv) == (
        "fedsim: error: kd3a-gate-start = 0.99 is above kd3a-gate-end = 0.5: the confidence gate "
        "rises from start to end (equal values keep it fixed)")


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_config_file_that_is_not_utf8_text_is_refused(tmp_path, capsys, command):
    path = tmp_path / "c.toml"
    path.write_bytes(b"\xff\xfe garbage\n")
    assert _refused(capsys, [command, str(path), "--out", str(tmp_path / "r")]) == (
        f"fedsim: error: config file '{path}' is not UTF-8 text (TOML must be): byte 0xff at offset 0")


def test_a_directory_given_as_the_config_file_is_named_as_one(tmp_path, capsys):
    assert _refused(capsys, ["run", str(tmp_path)]) == (
        f"fedsim: error: config file '{tmp_path}' is a directory; give a TOML file")


QUICK = "experiments/quickstart.toml"


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", QUICK, "--grid", "lr=0.01,0.05", "--set", "lr=0.2", "--seeds", "0"],
     "fedsim: error: --set 'lr=0.2': lr is set by --grid lr for every run; give its values there only"),
    (["sweep", QUICK, "--grid", "lr=0.01", "--set", "seed=3", "--seeds", "0"],
     "fedsim: error: --set 'seed=3': a sweep's seeds come from --seeds (e.g. --seeds 0,1,2)"),
    (["compare", QUICK, "--strategies", "fedrep", "--set", "strategy=fedavg", "--seeds", "0"],
     "fedsim: error: --set 'strategy=fedavg': strategy is set by --grid strategy (compare: --strategies) "
     "for every run; give its values there only"),
    (["compare", QUICK, "--strategies", " , ", "--seeds", "0"],
     "fedsim: error: --strategies ' , ': give at least one, e.g. --strategies fedrep,fedavg"),
])
def test_a_grid_key_also_set_with_set_or_no_strategy_is_refused(tmp_path, capsys, argv, message):
    assert _refused(capsys, [*argv, "--out", str(tmp_path / "grid")]) == message
    assert not (tmp_path / "grid").exists()


@pytest.fixture(scope="module")
def a_run(tmp_path_factory):
    from fedsim.history import RunWriter

    run_dir = tmp_path_factory.mktemp("plot") / "run"
    writer = RunWriter(run_dir, {"strategy": "fedrep", "num-clients": 2})
    for r in (1, 2):
        writer.log_round({"round": r, "accuracy": 0.5, "clients": {"0": 0.4, "1": 0.6}})
    writer.finish()
    return run_dir


def test_plot_label_must_be_a_config_key(a_run, tmp_path, capsys):
    assert _refused(capsys, ["plot", str(a_run), "--label", "nosuchkey", "-o", str(tmp_path / "p.png")]
                    ).startswith("fedsim: error: --label nosuchkey: unknown config key 'nosuchkey'")
    assert main(["plot", str(a_run), "--label", "num_clients", "-o", str(tmp_path / "p")]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'p.png'}"  # the file matplotlib wrote
    assert (tmp_path / "p.png").is_file()


def test_plot_to_an_unknown_image_format_is_refused(a_run, tmp_path, capsys):
    assert _refused(capsys, ["plot", str(a_run), "-o", str(tmp_path / "p.xyz")]).startswith(
        f"fedsim: error: -o '{tmp_path / 'p.xyz'}': cannot write a '.xyz' image; use one of ")


def test_a_plugin_strategy_that_is_not_a_cohort_fedavg_is_refused(tmp_path, capsys):
    import sys

    from fedsim.algorithms import ALGORITHMS

    plugin = tmp_path / "not_a_strategy_plugin.py"
    plugin.write_text("from clients import specs\nfrom fedsim.algorithms import ALGORITHMS, Algorithm\n"
                      "class NotAStrategy:\n    pass\n"
                      "ALGORITHMS['not-a-strategy'] = Algorithm(NotAStrategy, specs.FEDREP)\n")
    argv = ["run", *SMALL, "--set", f"plugins={plugin}", "--set", "strategy=not-a-strategy",
            "--out", str(tmp_path / "r")]
    try:
        assert "its server class <class 'not_a_strategy_plugin.NotAStrategy'> must subclass " \
               "strategies.base.CohortFedAvg" in _refused(capsys, argv)
    finally:  # the registry lists its algorithms in README's key table: leave it as found
        ALGORITHMS.pop("not-a-strategy", None)
        sys.modules.pop("not_a_strategy_plugin", None)
