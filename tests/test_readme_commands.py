"""Every command the README shows, run through the real CLI in a scratch directory,
shrunk with small overrides so each takes seconds (like pytorch/examples running each
example with a dry-run flag); exit 0 and the files it promises. A command that cannot be
shrunk has an entry saying why. The README's commands are parsed (fenced bash blocks and
inline code starting with a program name), so a command added to the README without an
entry here fails `test_every_readme_command_has_an_entry`.

The commands share one working directory and run in README order: `fedsim plot runs/rep
runs/avg` and `fedsim resume runs/my-run` use the runs of earlier commands."""

from __future__ import annotations

import glob
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PROGRAMS = ("fedsim", "python", "python3.11", "pip", "pytest", "flwr", "flower-superlink")
SHRINK = "--set num-rounds=2 --set num-clients=4"


@dataclass(frozen=True)
class Run:
    """Run the README command with ``extra`` appended (or, for a template, the command
    ``instead``); ``files`` (globs, relative to the working directory) must then each
    match exactly one file."""

    extra: str = ""
    files: tuple[str, ...] = ()
    ray: bool = True  # marked ray: it starts Ray or reads what a command that does wrote
    instead: str = ""


def _run_dir(pattern: str) -> tuple[str, ...]:
    return tuple(f"{pattern}/{name}" for name in ("config.json", "metrics.jsonl", "summary.json"))


SETUP = "the tests already run in an installed virtual environment"
FLWR = ("`flwr run` needs a SuperLink started in the background and writes ~/.flwr/config.toml; "
        "tests/test_flwr_run.py runs the same steps with a free port and its own FLWR_HOME")
COMMANDS: dict[str, Run | str] = {
    "python3.11 -m venv .venv": SETUP,
    ". .venv/bin/activate": SETUP,
    "pip install -e .": SETUP,
    "pip install torch --index-url https://download.pytorch.org/whl/cpu":
        ".ci/run installs torch this way (a local CPU wheel where PyTorch's index is out of reach) and "
        "fails if a CUDA build of torch or an nvidia-* package got in",
    'pip install -q -e ".[test]"': SETUP,
    "python -m pytest": "the test suite itself",
    "fedsim run experiments/quickstart.toml": Run(f"{SHRINK} --out runs/rep", _run_dir("runs/rep")),
    "fedsim run": Run(f"{SHRINK} --set checkpoint-every=1 --out runs/my-run", _run_dir("runs/my-run")),
    "fedsim run experiments/quickstart.toml --set strategy=fedavg --set num-rounds=60 --out runs/avg":
        Run(SHRINK, _run_dir("runs/avg")),
    "fedsim run --help": Run(ray=False),
    "fedsim resume runs/my-run": Run(files=_run_dir("runs/my-run")),
    "fedsim resume": "names the command; `fedsim resume runs/my-run` is run",
    "fedsim plot runs/rep runs/avg -o compare.png": Run(files=("compare.png",)),
    # compare and sweep start Ray once for all their runs
    "fedsim compare experiments/compare_shards.toml --out runs/compare-shards":
        Run(f"{SHRINK} --strategies fedrep --seeds 0",
            ("runs/compare-shards/table.md", "runs/compare-shards/curves.png")),
    "fedsim compare experiments/compare_dirichlet.toml --strategies fedrep,fedavg --seeds 0,1 --out runs/cmp":
        Run(f"{SHRINK} --strategies fedavg --seeds 1", ("runs/cmp/table.md", "runs/cmp/curves.png")),
    "fedsim sweep experiments/quickstart.toml --grid strategy=fedrep,fedavg --grid lr=0.01,0.05 "
    "--seeds 0,1,2 --out runs/sweep":
        Run(f"{SHRINK} --seeds 0",
            ("runs/sweep/table.md", "runs/sweep/runs.csv", "runs/sweep/curves.png")),
    "fedsim sweep experiments/quickstart.toml --grid strategy=fedrep,fedavg-ft --grid lr=0.01,0.05 "
    "--set val-fraction=0.2 --select val --out runs/tuned":
        Run(f"{SHRINK} --seeds 0", ("runs/tuned/selection.md", "runs/tuned/table.md")),
    "fedsim sweep CONFIG --grid KEY=V1,V2 [--grid …] --seeds … --out DIR":
        "the syntax of the sweep commands above, which are run",
    "fedsim sweep --select val": "names an option of the selection command above, which is run",
    "fedsim plot": "names the command; `fedsim plot runs/rep runs/avg -o compare.png` is run",
    "fedsim compare": "names the command; the compare commands above are run",
    "fedsim sweep … --set val-fraction=0.2 --select val":
        "the shape of the selection command above, which is run",
    "pip install 'fedsim[tensorboard]'":
        "an optional extra: .ci/run installs it, tests/test_protocol.py reads the events back",
    "fedsim run --set strategy=kd3a --set dataset=digit5-synth --set partitioner=domain "
    "--set num-clients=5 --set target-domain=mnistm --set fraction-train=1.0":
        Run("--set num-rounds=1 --set synth-per-class=4", _run_dir("runs/kd3a-digit5-synth-*")),
    "fedsim run --set strategy=kd3a --set dataset=digit5-synth --set partitioner=domain "
    "--set num-clients=10 --set target-domain=mnistm --set fraction-train=1.0 "
    "--set domain-split=shards --set classes-per-client=3 --set kd3a-share-head=true "
    "--set kd3a-finetune=true --out runs/kd3a-skewed":
        Run("--set num-rounds=1 --set synth-per-class=4", _run_dir("runs/kd3a-skewed")),
    "fedsim run --set strategy=fedrep --set dataset=linear-regression":
        Run(SHRINK, _run_dir("runs/fedrep-linear-regression-*")),
    "fedsim run --set strategy=fedrep-groups --set partitioner=rotated --set fraction-train=1.0 "
    "--out runs/groups":
        Run(f"{SHRINK} --set group-after=1 --set num-groups=2", _run_dir("runs/groups")),
    "fedsim affinity runs/groups -o affinity.png": Run(files=("affinity.png",)),  # reads a Ray run
    "fedsim affinity RUN_DIR -o FILE.png":
        "names the command; `fedsim affinity runs/groups -o affinity.png` is run",
    "python experiments/groups_rotated.py --seeds 0,1,2 --out runs/groups-exp":
        "30 runs of 40 rounds (~35 minutes on 2 cores); tests/test_groups.py runs the strategy in process",
    "python experiments/affinity_variants.py --seeds 0,1,2 --out runs/variants":
        Run("--seeds 0 --rounds 1 --variants loss,refit-lstsq --set num-clients=8 --set head-epochs=1",
            ("runs/variants/variants_table.md",), ray=False),
    # issue 20: LogME, model patches (the transfer tools)
    "fedsim run experiments/quickstart.toml --set logme=true --out runs/logme":
        Run(SHRINK, _run_dir("runs/logme")),
    "fedsim plot runs/logme --metric logme -o logme.png": Run(files=("logme.png",)),  # reads a Ray run
    "fedsim compare experiments/compare_domains.toml --strategies fedrep,fedrep-patch,fedbn --out runs/patch":
        Run("--set num-rounds=2 --set synth-per-class=2 --strategies fedrep-patch --seeds 0",
            ("runs/patch/table.md", "runs/patch/curves.png")),
    "python experiments/transfer_diagnostics.py --seeds 0,1,2 --out runs/transfer":
        "~40 minutes of runs (13 configurations x 3 seeds); its parts run in the tests of each tool",
    "python experiments/kd3a_lodo.py": "~45 minutes of runs (5 held-out domains x 3 seeds x 2 methods)",
    "python experiments/kd3a_lodo.py --rounds 50 --seeds 0,1,2,3,4 --variants source-only,kd3a "
    "--out experiments/results/kd3a_lodo_50_rounds":
        "reuses the 50 committed runs, but writes the committed table file; "
        "test_the_committed_50_round_kd3a_runs_rebuild_their_table runs it on a copy with --reuse-only",
    "python experiments/kd3a_lodo.py --personalized --targets mnistm --seeds 0,1,2":
        "18 runs of 22 clients (~16 minutes on 2 cores); tests/test_kd3a.py runs several targets in process",
    "python experiments/linear_fedrep.py": "dozens of 300-round runs; the linear setting is run above",
    "fedsim split CONFIG --set ... -o split.png":
        Run(files=("split.png",), ray=False,
            instead=f"fedsim split experiments/quickstart.toml {SHRINK} -o split.png"),
    'python -c "from fedsim.synth_digits import save_samples_png; save_samples_png(\'samples.png\')"':
        Run(files=("samples.png",), ray=False),
    "pip install 'fedsim[flwr-datasets]'":
        "an optional extra: .ci/run installs it, tests/test_flwr_datasets.py uses it",
    "fedsim run --set plugins=my_splits.py --set partitioner=two-groups":
        Run(SHRINK, _run_dir("runs/fedrep-digits-*")),
    "fedsim run experiments/quickstart.toml --set plugins=fedrep_prox.py --set strategy=fedrep-prox":
        Run(f"{SHRINK} --out runs/fedrep-prox", _run_dir("runs/fedrep-prox")),
    "fedsim run --set partitioner=file --set split-file=split.json --set num-clients=2":
        Run("--set num-rounds=2 --out runs/file-split", _run_dir("runs/file-split")),
    "python experiments/bench.py": "a benchmark: minutes of timed runs, never a test",
    "python experiments/bench.py --scaling --clients 1000,10000,100000 --fraction 0.01":
        "a benchmark: 100,000 clients take minutes and GiBs, never a test",
    "mkdir -p ~/.flwr": FLWR,
    "cat >> ~/.flwr/config.toml <<'EOF'": FLWR,
    "flower-superlink --insecure --simulation --disable-runtime-dependency-installation "
    "--host 127.0.0.1 --port 39091": FLWR,
    'flwr run . local-simulation --run-config "num-rounds=3" --federation-config "num-supernodes=2" '
    "--stream": FLWR,
    "flwr run": FLWR,
}


def readme_commands(text: str = README) -> list[str]:
    """The README's commands in order, without repeats: each line of a fenced bash block
    (continuations joined, ``&&`` chains split, comments and here-document bodies dropped)
    and each inline code span that starts with a program name."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in _logical_lines(block):
            commands += [" ".join(part.split()).rstrip(" &") for part in line.split("&&")]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.split(" ")[0] in PROGRAMS and " " in span:
            commands.append(span)
    return list(dict.fromkeys(c for c in commands if c))


def _logical_lines(block: str) -> list[str]:
    lines, current, heredoc = [], "", None
    for raw in block.splitlines():
        if heredoc:
            heredoc = None if raw.strip() == heredoc else heredoc
            continue
        line = re.sub(r"\s+#.*$", "", raw)
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        marker = re.search(r"<<'?(\w+)'?", current)
        heredoc = marker.group(1) if marker else None
        lines.append(current)
        current = ""
    return lines


def test_every_readme_command_has_an_entry():
    commands = readme_commands()
    missing = [c for c in commands if c not in COMMANDS]
    assert not missing, f"README commands without an entry in COMMANDS (how to shrink, or why not): {missing}"
    stale = [c for c in COMMANDS if c not in commands]
    assert not stale, f"COMMANDS entries no longer in the README: {stale}"
    for command, entry in COMMANDS.items():
        assert isinstance(entry, Run) or entry.strip(), f"{command!r}: say why it is not run"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch directory with experiments/, the README's Python files (the blocks that
    start with ``# NAME.py``) and its split.json."""
    work = tmp_path_factory.mktemp("readme")
    (work / "experiments").symlink_to(ROOT / "experiments")
    for name, body in re.findall(r"```python\n# (\w+\.py)\n(.*?)```", README, re.S):
        (work / name).write_text(body)
    (work / "split.json").write_text(re.search(r"```json\n(.*?)```", README, re.S)[1])
    return work


def _params():
    for command in readme_commands():
        entry = COMMANDS.get(command, "no entry (see test_every_readme_command_has_an_entry)")
        marks = [pytest.mark.ray] if isinstance(entry, Run) and entry.ray else []
        yield pytest.param(command, entry, marks=marks, id=command[:60])


@pytest.mark.parametrize("command, entry", _params())
def test_readme_command(workdir, command, entry):
    if not isinstance(entry, Run):
        pytest.skip(entry)
    argv = shlex.split(entry.instead or command) + shlex.split(entry.extra)
    if argv[0] == "fedsim":
        argv = [sys.executable, "-m", "fedsim", *argv[1:]]
    elif argv[0] == "python":
        argv[0] = sys.executable
    result = subprocess.run(argv, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr, result.stderr
    for pattern in entry.files:
        matches = glob.glob(str(workdir / pattern))
        assert len(matches) == 1, f"{command}: expected one {pattern}, found {matches}"
        if pattern.endswith("summary.json"):
            assert json.loads(Path(matches[0]).read_text())["status"] == "completed"
    if argv[3:4] == ["run"] and "--help" not in argv:
        assert result.stdout.startswith("final_")  # the closing line


def test_the_committed_50_round_kd3a_runs_rebuild_their_table(tmp_path):
    """The README's 50-round KD3A gains come from the runs committed with them: rebuilt
    from a copy with --reuse-only (nothing runs), the table says what the README says."""
    import shutil

    out = tmp_path / "lodo50"
    shutil.copytree(ROOT / "experiments/results/kd3a_lodo_50_rounds", out)
    done = subprocess.run(
        [sys.executable, "experiments/kd3a_lodo.py", "--rounds", "50", "--seeds", "0,1,2,3,4",
         "--variants", "source-only,kd3a", "--out", str(out), "--reuse-only"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for row in ("| mnist | kd3a | +2.00 | +1.44 / +3.68 / +0.80 / +0.40 / +3.68 | 5/5 |",
                "| mnistm | kd3a | +2.24 | +0.72 / +1.92 / +3.60 / +0.88 / +4.08 | 5/5 |",
                "| usps | kd3a | +7.25 | +8.80 / +9.68 / +2.88 / +7.20 / +7.68 | 5/5 |",
                "| syn | kd3a | +5.23 | +7.60 / +3.28 / +4.56 / +4.48 / +6.24 | 5/5 |",
                "| svhn | kd3a | +31.78 | +37.36 / +43.60 / +27.20 / +25.36 / +25.36 | 5/5 |",
                "| **mean over targets** | kd3a | +9.70 | | |",
                "| svhn | 5 | 56.85 ± 7.65 | 88.62 ± 1.21 |"):
        assert row in done.stdout
    assert (out / "table-source-only+kd3a.md").read_text() == (
        ROOT / "experiments/results/kd3a_lodo_50_rounds/table-source-only+kd3a.md").read_text()
    ablation = subprocess.run(
        [sys.executable, "experiments/kd3a_lodo.py", "--rounds", "50", "--seeds", "0,1,2",
         "--variants", "source-only,adabn,no-focus,kd3a", "--out", str(out), "--reuse-only"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ablation.returncode == 0, ablation.stderr
    assert "| **mean over targets** | no-focus | +10.34 | | |" in ablation.stdout
    name = "table-source-only+adabn+no-focus+kd3a.md"
    assert (out / name).read_text() == (ROOT / "experiments/results/kd3a_lodo_50_rounds" / name).read_text()


def test_kd3a_lodo_reuse_only_with_nothing_completed_says_so(tmp_path):
    done = subprocess.run(
        [sys.executable, "experiments/kd3a_lodo.py", "--targets", "mnist", "--seeds", "0", "--out",
         str(tmp_path / "empty"), "--reuse-only"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "no target has a seed that every variant completed" in done.stderr
    assert "--reuse-only runs nothing" in done.stderr and "Traceback" not in done.stderr
