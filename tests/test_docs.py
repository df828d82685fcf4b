"""
Every Python block of the README and of the documentation runs (with at most ``MAX_TIMESTEPS`` of training), and so
does every documented ``python -m sb3_acktr.zoo`` command (with a short budget). The install and ``make`` commands are
what the continuous integration runs; the benchmark commands have their own tests (``tests/test_benchmarks.py``). A
block or example that says it trains with a section of the zoo file builds the model the zoo builds from that section.
"""

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rl_zoo3.exp_manager import ExperimentManager
from stable_baselines3.common.env_util import make_vec_env

from sb3_acktr import ACKTR
from sb3_acktr.zoo import hyperparameter_sections, register, section_policy_kwargs

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


SECTION_CLAIM = re.compile(r"The (\S+) section of hyperparams/acktr\.yml")
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
# Arguments that say how a model runs and logs, not what it learns with.
RUN_ARGUMENTS = {
    "self", "policy", "env", "verbose", "seed", "device", "tensorboard_log", "stats_window_size", "_init_setup_model",
}  # fmt: skip


class LearnCalled(Exception):
    """Raised by ``learn`` in place of training: the model that a document built and the budget it asked for."""

    def __init__(self, model: ACKTR, total_timesteps: int) -> None:
        super().__init__()
        self.model = model
        self.total_timesteps = total_timesteps


def section_claims() -> list[tuple[str, str, str]]:
    """The Python blocks and examples that say they train with a section of the zoo file: location, section, code."""
    claims = [(location, match.group(1), code) for location, code in BLOCKS if (match := SECTION_CLAIM.search(code))]
    for example in EXAMPLES:
        code = example.read_text()
        if match := SECTION_CLAIM.search(code):
            claims.append((str(example.relative_to(ROOT)), match.group(1), code))
    return claims


SECTION_CLAIMS = section_claims()


def setting_of(model: ACKTR, name: str) -> Any:
    """A constructor argument as the model holds it (the statistics interval as resolved for its network)."""
    return model.kfac.stats_update_interval if name == "stats_update_interval" else getattr(model, name)


def at_progress(setting: Any, progress_remaining: float) -> Any:
    """A setting's value at a point of the run (a schedule's value there; a class is a setting, not a schedule)."""
    return setting(progress_remaining) if callable(setting) and not isinstance(setting, type) else setting


def section_model(env_id: str, section: dict[str, Any]) -> tuple[ACKTR, int]:
    """The model that ``python -m sb3_acktr.zoo train --env env_id`` builds from a section (no normalisation), its budget."""
    assert not section.get("normalize", False), "compare the VecNormalize wrapper too before claiming such a section"
    kwargs = {key: value for key, value in section.items() if key not in ("n_timesteps", "policy", "n_envs", "normalize")}
    register()  # the zoo's schedules, with ACKTR's trust-region bounds among them
    kwargs = ExperimentManager._preprocess_schedules(kwargs)
    if "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = section_policy_kwargs(kwargs["policy_kwargs"])
    env = make_vec_env(env_id, n_envs=section.get("n_envs", 1))
    return ACKTR(section["policy"], env, **kwargs), int(section["n_timesteps"])


def test_the_documents_claim_sections() -> None:
    assert {(location.split(":")[0], section) for location, section, _ in SECTION_CLAIMS} >= {
        ("README.md", "CartPole-v1"),
        ("docs/guide/quickstart.md", "CartPole-v1"),
        ("examples/quickstart.py", "CartPole-v1"),
    }


@pytest.mark.parametrize("location, env_id, code", SECTION_CLAIMS, ids=[location for location, _, _ in SECTION_CLAIMS])
def test_a_claimed_section_is_what_trains(location: str, env_id: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A block or example that says it trains with a section builds the model the zoo builds from it, for its budget."""

    def stop_at_learn(self: ACKTR, total_timesteps: int, *args, **kwargs) -> ACKTR:
        raise LearnCalled(self, total_timesteps)

    monkeypatch.setattr(ACKTR, "learn", stop_at_learn)
    monkeypatch.setattr(sys, "argv", [location])
    with pytest.raises(LearnCalled) as called:
        exec(compile(code, location, "exec"), {"__name__": "__main__"})
    model, total_timesteps = called.value.model, called.value.total_timesteps
    reference, budget = section_model(env_id, hyperparameter_sections()[env_id])

    assert total_timesteps == budget
    assert (model.policy_class, model.n_envs) == (reference.policy_class, reference.n_envs)
    for name in inspect.signature(ACKTR.__init__).parameters.keys() - RUN_ARGUMENTS:
        for progress_remaining in (1.0, 0.5, 0.1):
            documented, zoo = (at_progress(setting_of(m, name), progress_remaining) for m in (model, reference))
            assert documented == pytest.approx(zoo) if isinstance(zoo, float) else documented == zoo, (
                f"{location}: {name} at progress remaining {progress_remaining} is {documented!r}, section {env_id}: {zoo!r}"
            )
