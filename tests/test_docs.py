"""
Every Python block of the README and of the documentation runs (with at most ``MAX_TIMESTEPS`` of training), and so
does every documented ``python -m sb3_acktr.zoo`` command (with a short budget). The install and ``make`` commands are
what the continuous integration runs; the benchmark commands have their own tests (``tests/test_benchmarks.py``).
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sb3_acktr import ACKTR

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MAX_TIMESTEPS = 4_000
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in PYTHON_BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            blocks.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_documents_have_python_blocks() -> None:
    assert len(BLOCKS) >= 8
    assert {location.split(":")[0] for location, _ in BLOCKS} >= {"README.md", "docs/guide/examples.md"}


@pytest.mark.parametrize("location, code", BLOCKS, ids=[location for location, _ in BLOCKS])
def test_python_block_runs(location: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files the block saves
    learn = ACKTR.learn

    def shorter_learn(self: ACKTR, total_timesteps: int, *args, **kwargs) -> ACKTR:
        return learn(self, min(total_timesteps, MAX_TIMESTEPS), *args, **kwargs)

    monkeypatch.setattr(ACKTR, "learn", shorter_learn)
    exec(compile(code, location, "exec"), {"__name__": "__main__"})


BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
ZOO_PREFIX = "python -m sb3_acktr.zoo "
# Short budgets for the documented zoo commands (checkpoints every rollout of CartPole's section, and the resumed
# checkpoint named accordingly); their options otherwise as written.
SHORT_BUDGETS = {"-n": "320", "--n-trials": "2", "--save-freq": "160"}
CHECKPOINT = re.compile(r"rl_model_\d+_steps\.zip")
SHORT_OPTIMIZATION = ["--n-jobs", "1", "--n-evaluations", "1", "--eval-episodes", "2"]


def zoo_blocks() -> list[tuple[str, list[list[str]]]]:
    """The documented ``python -m sb3_acktr.zoo`` commands, block by block (a block's commands may depend on each other)."""
    blocks = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BASH_BLOCK.finditer(text):
            commands = [
                shlex.split(line.split("#")[0])[3:] for line in match.group(1).splitlines() if line.startswith(ZOO_PREFIX)
            ]
            if commands:
                blocks.append((f"{document.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 2}", commands))
    return blocks


def shortened(arguments: list[str]) -> list[str]:
    """A zoo command with a short budget: fewer steps, no periodic evaluation, fewer and smaller trials."""
    arguments = list(arguments)
    for option, value in SHORT_BUDGETS.items():
        if option in arguments:
            arguments[arguments.index(option) + 1] = value
        elif option == "-n":
            arguments += [option, value]
    checkpoint = f"rl_model_{SHORT_BUDGETS['--save-freq']}_steps.zip"
    arguments = [CHECKPOINT.sub(checkpoint, argument) for argument in arguments]
    if arguments[0] == "train" and "--eval-freq" not in arguments:
        arguments += ["--eval-freq", "-1"]
    if "-optimize" in arguments:
        arguments += SHORT_OPTIMIZATION
    return arguments


ZOO_BLOCKS = zoo_blocks()


def test_the_documents_have_zoo_commands() -> None:
    assert {location.split(":")[0] for location, _ in ZOO_BLOCKS} >= {"README.md", "docs/guide/rl_zoo.md"}
    assert shortened(["train", "--env", "X", "-n", "50000", "-optimize", "--n-trials", "50"])[:8] == [
        "train", "--env", "X", "-n", "320", "-optimize", "--n-trials", "2",
    ]  # fmt: skip
    resumed = ["train", "--env", "X", "-n", "100000", "-i", "logs/acktr/X_1/rl_model_40000_steps.zip", "--resume"]
    assert shortened(resumed)[:7] == ["train", "--env", "X", "-n", "320", "-i", "logs/acktr/X_1/rl_model_160_steps.zip"]


@pytest.mark.parametrize("location, commands", ZOO_BLOCKS, ids=[location for location, _ in ZOO_BLOCKS])
def test_zoo_commands_run(location: str, commands: list[list[str]], tmp_path: Path) -> None:
    environment = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    for arguments in commands:
        result = subprocess.run(
            [sys.executable, "-m", "sb3_acktr.zoo", *shortened(arguments)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{location}: {' '.join(arguments)}\n{result.stderr[-3000:]}"
