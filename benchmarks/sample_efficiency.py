"""
Sample efficiency of ACKTR against A2C and PPO, each with its tuned rl-zoo3 hyperparameters (ACKTR's from
``hyperparams/acktr.yml``), trained by rl-zoo3 with the same budget, evaluation schedule and seeds.

    python benchmarks/sample_efficiency.py run --env CartPole-v1 --seeds 0 1 2 3 4     # resumable (done runs are kept)
    python benchmarks/sample_efficiency.py report                                      # table, JSON, CSV and plots
    python benchmarks/sample_efficiency.py report --keep-seeds       # with the last report's runs of seeds not run here
    python benchmarks/sample_efficiency.py final --env Hopper-v5 --algo acktr --episodes 50   # the final policies, again
    python benchmarks/sample_efficiency.py run --env BreakoutNoFrameskip-v4 --algos acktr --seeds 0 \
        --params stats_batch_size:160 --runs benchmarks/results/runs/_variants/stats_batch_size_160   # other settings
    python benchmarks/sample_efficiency.py run --env BreakoutNoFrameskip-v4 --algos acktr a2c --seeds 0 1 2 \
        --defaults --runs benchmarks/results/runs/_defaults     # library defaults in the section's set-up

``run`` trains every (algorithm, seed) with ``python -m sb3_acktr.zoo train`` in a subprocess, in parallel
(``--jobs``, one thread each), into ``benchmarks/results/runs/ENV/ALGO/seed_S``. Runs of 1M timesteps or more save a
checkpoint every 100k, and a run cut short resumes from its last one (``--resume`` of ``sb3_acktr.zoo``: a new zoo
folder, read after the first one's data up to the checkpoint; an ACKTR checkpoint resumes at the start of its
rollout, which is collected again); a shorter run starts again. The zoo's EvalCallback writes ``evaluations.npz``
(evaluation return against timesteps; deterministic, except on Atari where rl-zoo3 samples the actions) and the
Monitor files give wall-clock time (the vectorised environments step in lockstep, so env 0's step count times n_envs
is the run's timestep count).
``report`` writes ``benchmarks/results/sample_efficiency.{json,csv}``, ``docs/sample_efficiency_ENV.png`` and the
README's results table (a few of them): for each task, timesteps and seconds until the evaluation return first reaches
the threshold (mean and standard deviation over the seeds that reached it, and how many did), the mean evaluation return
over the whole run (area under the curve: it also rewards staying above the threshold), the mean return of the last 100
training episodes (from the Monitor files: stochastic actions, full games, many more episodes than the evaluations) and
the timesteps at which that running mean first reached A2C's final one (averaged over A2C's seeds): a ratio of sample
efficiency where the threshold is out of reach within the budget.
``final`` evaluates the final policy of each finished run again over more episodes (deterministic actions, on an
environment seeded apart from training's and the evaluations'): the benchmark's final evaluation has 5 or 10 episodes,
too few on tasks whose episodes end early at random (Hopper).
"""

import argparse
import csv
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# Threshold, budget (timesteps, the same for every algorithm), evaluation every ... timesteps, episodes per evaluation;
# on Atari the Monitor sits below the zoo's AtariWrapper and counts emulator frames, frame_skip of them per timestep.
TASKS: dict[str, dict[str, float]] = {
    "CartPole-v1": dict(threshold=475, budget=100_000, eval_freq=2_500, eval_episodes=10),
    "Acrobot-v1": dict(threshold=-100, budget=150_000, eval_freq=2_500, eval_episodes=10),
    "LunarLander-v3": dict(threshold=200, budget=1_000_000, eval_freq=25_000, eval_episodes=10),
    "PongNoFrameskip-v4": dict(threshold=18, budget=3_000_000, eval_freq=100_000, eval_episodes=5, frame_skip=4),
    "BreakoutNoFrameskip-v4": dict(threshold=10, budget=1_000_000, eval_freq=50_000, eval_episodes=5, frame_skip=4),
    "HalfCheetah-v5": dict(threshold=1450, budget=1_000_000, eval_freq=20_000, eval_episodes=5),
    "Hopper-v5": dict(threshold=2428, budget=1_000_000, eval_freq=20_000, eval_episodes=5),
    "Walker2d-v5": dict(threshold=1217, budget=1_000_000, eval_freq=20_000, eval_episodes=5),
}
ALGOS = ("acktr", "a2c", "ppo")
# The README's results table, between its markers: its tasks in order, the name it gives each and the measure its row
# shows ("reached": seeds reaching the threshold and when; "timesteps": timesteps to the threshold; "final": final return).
README_ROWS: dict[str, tuple[str, str]] = {
    "BreakoutNoFrameskip-v4": ("Breakout", "reached"),
    "LunarLander-v3": ("LunarLander-v3", "reached"),
    "CartPole-v1": ("CartPole-v1", "timesteps"),
    "Acrobot-v1": ("Acrobot-v1", "timesteps"),
    "HalfCheetah-v5": ("HalfCheetah-v5", "final"),
    "Hopper-v5": ("Hopper-v5", "final"),
    "Walker2d-v5": ("Walker2d-v5", "final"),
}
README_MARKERS = ("<!-- results-table-start -->\n", "<!-- results-table-end -->")
# ``final`` seeds its environment with this plus the run's seed, apart from the seeds rl-zoo3 gives training's envs.
FINAL_EVALUATION_SEED = 10_000
# What ``run --defaults`` keeps of ACKTR's section for every algorithm: the environment's set-up.
ENVIRONMENT_KEYS = ("env_wrapper", "frame_stack", "n_envs", "normalize", "policy", "n_timesteps")
# Runs of at least this many timesteps save a checkpoint every CHECKPOINT_FREQ timesteps, from which a cut run resumes.
CHECKPOINT_FREQ = 100_000


def run_directory(env_id: str, algo: str, seed: int, runs: Path | None = None) -> Path:
    return (runs or RUNS) / env_id / algo / f"seed_{seed}"


def train(
    env_id: str,
    algo: str,
    seed: int,
    budget: int | None,
    params: list[str] | None = None,
    runs: Path | None = None,
    defaults: bool = False,
) -> str:
    """
    One zoo run; ``params`` (``KEY:VALUE``, rl-zoo3's ``-params``) override the section's hyperparameters, and with
    ``defaults`` the algorithm keeps only the section's environment set-up (``ENVIRONMENT_KEYS``) and its library
    defaults for everything else. A run cut short resumes from its last checkpoint (``--resume``), or starts again if it
    saved none.
    """
    task = TASKS[env_id]
    directory = run_directory(env_id, algo, seed, runs)
    if (directory / "done.json").is_file():
        return f"{env_id} {algo} seed {seed}: already done"
    directory.mkdir(parents=True, exist_ok=True)
    n_timesteps = int(budget or task["budget"])
    evaluation = ["--eval-freq", str(int(task["eval_freq"])), "--eval-episodes", str(int(task["eval_episodes"]))]
    options = [*evaluation, "--n-eval-envs", "1", "--verbose", "0", *hyperparameters_option(env_id, algo, directory, defaults)]
    if n_timesteps >= 10 * CHECKPOINT_FREQ:
        options += ["--save-freq", str(CHECKPOINT_FREQ)]
    if (checkpoint := prepare_resumption(directory, algo, env_id, n_timesteps)) is not None:
        options += ["-i", str(checkpoint), "--resume"]
    command = zoo_train_command(env_id, algo, n_timesteps, seed, directory / "zoo", options, params)
    start = time.time()
    with open(directory / "train.log", "a" if checkpoint else "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, env=one_thread_environment(), cwd=ROOT)
    seconds = sum(cut["seconds"] for cut in resumptions(directory)) + time.time() - start
    (directory / "done.json").write_text(json.dumps(dict(seconds=seconds, n_timesteps=n_timesteps, command=command)))
    return f"{env_id} {algo} seed {seed}: {seconds:.0f} s"


class Segment(NamedTuple):
    """
    One zoo run folder of a (possibly resumed) run: its data counts from ``start`` timesteps, and up to ``end``
    timesteps and ``seconds`` of its own clock when a later folder resumed from its checkpoint (``end`` None: the last).
    """

    folder: Path
    start: int = 0
    end: int | None = None
    seconds: float = 0.0


def checkpoint_timesteps(checkpoint: Path) -> int:
    """The timestep count a saved model resumes from (ACKTR's: the start of the rollout in progress)."""
    with zipfile.ZipFile(checkpoint) as archive:
        return int(json.loads(archive.read("data"))["num_timesteps"])


def env0_monitor(folder: Path) -> Path:
    """Env 0's Monitor file in a zoo run folder (``0.monitor.csv``, or ``monitor.csv`` for a single env)."""
    return next(path for path in sorted(folder.glob("*.monitor.csv")) if path.name.split(".")[0] in ("0", "monitor"))


def monitor_start(folder: Path) -> float:
    """Wall-clock time at which the zoo run in ``folder`` started (env 0's Monitor header)."""
    return float(json.loads(env0_monitor(folder).read_text().split("\n", 1)[0].lstrip("#"))["t_start"])


def resumptions(directory: Path) -> list[dict[str, float]]:
    """Where each zoo folder of a resumed run took over (``resumed.json``): the checkpoint's timesteps, and seconds."""
    path = directory / "resumed.json"
    return json.loads(path.read_text()) if path.is_file() else []


def prepare_resumption(directory: Path, algo: str, env_id: str, n_timesteps: int) -> Path | None:
    """
    The checkpoint to resume a cut run from: the latest one short of the budget, in whichever zoo folder of the run
    saved it; the folders written after it are removed and ``resumed.json`` records where each folder took over (the
    checkpoint's timesteps and its folder's seconds then). None, with the run's folders removed: start again.
    """
    folders = zoo_run_folders(directory, algo, env_id)
    resumed = resumptions(directory)
    for index in reversed(range(len(folders))):
        saved = [(checkpoint_timesteps(path), path) for path in folders[index].glob("rl_model_*_steps.zip")]
        usable = sorted(checkpoint for checkpoint in saved if checkpoint[0] < n_timesteps)
        if usable:
            timesteps, checkpoint = usable[-1]
            for later in folders[index + 1 :]:
                shutil.rmtree(later)
            seconds = checkpoint.stat().st_mtime - monitor_start(folders[index])
            resumed = [*resumed[:index], dict(timesteps=timesteps, seconds=seconds)]
            (directory / "resumed.json").write_text(json.dumps(resumed))
            return checkpoint
    shutil.rmtree(directory / "zoo", ignore_errors=True)
    (directory / "resumed.json").unlink(missing_ok=True)
    return None


def zoo_train_command(
    env_id: str, algo: str, n_timesteps: int, seed: int, folder: Path, options: list[str], params: list[str] | None = None
) -> list[str]:
    """rl-zoo3's training command through ``sb3_acktr.zoo``, with ``options`` and ``params`` (``KEY:VALUE``, last)."""
    command = [
        sys.executable, "-m", "sb3_acktr.zoo", "train", "--algo", algo, "--env", env_id, "-n", str(n_timesteps),
        "--seed", str(seed), "-f", str(folder), *options,
    ]  # fmt: skip
    return [*command, "-params", *params] if params else command


def one_thread_environment() -> dict[str, str]:
    """The environment of a training subprocess: one thread."""
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def hyperparameters_option(env_id: str, algo: str, directory: Path, defaults: bool = False) -> list[str]:
    """
    ``-conf FILE`` where the run does not train with the algorithm's own section of the task: with ``defaults``, the
    set-up keys (``ENVIRONMENT_KEYS``) of ACKTR's section alone, for every algorithm; for A2C/PPO on a MuJoCo ``-v5``
    task, the ``-v4`` section under the ``-v5`` name (rl-zoo3's files tune these algorithms for ``-v4`` only; the tasks
    differ in details, not in their dynamics' scale).
    """
    import yaml

    if defaults:
        section = {key: value for key, value in zoo_sections("acktr")[zoo_key(env_id)].items() if key in ENVIRONMENT_KEYS}
    elif algo != "acktr" and env_id.endswith("-v5") and env_id not in (sections := zoo_sections(algo)):
        section = sections[env_id.replace("-v5", "-v4")]
    else:
        return []
    conf = directory / "hyperparams.yml"
    conf.write_text(yaml.safe_dump({env_id: section}))
    return ["-conf", str(conf)]


def zoo_sections(algo: str) -> dict[str, dict]:
    """The hyperparameter file that rl-zoo3 trains ``algo`` with (ours for ACKTR)."""
    if algo == "acktr":
        from sb3_acktr.zoo import hyperparameter_sections

        return hyperparameter_sections()
    import rl_zoo3
    import yaml

    with open(Path(rl_zoo3.__file__).parent / "hyperparams" / f"{algo}.yml") as file:
        return yaml.safe_load(file)


def zoo_key(env_id: str) -> str:
    """The key of a task's section: ``atari`` for an Atari game."""
    return "atari" if task_frame_skip(env_id) > 1 else env_id


def zoo_run_folders(directory: Path, algo: str, env_id: str) -> list[Path]:
    """The zoo's run folders in ``directory`` in the order they were written (more than one: a resumed run)."""
    folders = (directory / "zoo" / algo).glob(f"{env_id}_*")
    return sorted(folders, key=lambda folder: int(folder.name.rsplit("_", 1)[1]))


def run_segments(directory: Path, algo: str, env_id: str) -> list[Segment]:
    """The zoo run folders of one run, each with the part of its data that counts (see ``Segment``)."""
    folders = zoo_run_folders(directory, algo, env_id)
    if not folders:
        raise FileNotFoundError(f"no zoo run in {directory}")
    cuts = [(int(cut["timesteps"]), cut["seconds"]) for cut in resumptions(directory)]
    starts = [0, *(timesteps for timesteps, _ in cuts)]
    ends: list[tuple[int | None, float]] = [*cuts, (None, 0.0)]
    return [Segment(folder, start, end, seconds) for folder, start, (end, seconds) in zip(folders, starts, ends, strict=True)]


def as_segments(run: Path | Sequence[Segment]) -> Sequence[Segment]:
    """A zoo run folder as the one segment of its run."""
    return [Segment(run)] if isinstance(run, Path) else run


def task_frame_skip(env_id: str) -> int:
    """Emulator frames per timestep that the task's Monitor files count (see ``TASKS``)."""
    return int(TASKS[env_id].get("frame_skip", 1))


def _segment_offsets(run: Path | Sequence[Segment]) -> list[tuple[Segment, float]]:
    """Each segment of a run with the seconds its clock starts at (the time the segments before it counted)."""
    segments = as_segments(run)
    offsets = np.cumsum([0.0, *(segment.seconds for segment in segments[:-1])])
    return list(zip(segments, offsets.tolist(), strict=True))


def _up_to(values: np.ndarray, end: float | None) -> np.ndarray:
    """Which ``values`` are at most ``end`` (all of them when ``end`` is None: the run's last segment)."""
    return values <= end if end is not None else np.ones(len(values), dtype=bool)


def monitor_rows(path: Path) -> np.ndarray:
    """
    The rows ``(return, length, seconds)`` of a Monitor file, parsed once per version of the file (the report's
    measures read each file several times); the array is shared and read-only.
    """
    status = path.stat()
    return _parsed_monitor(path, status.st_mtime_ns, status.st_size)


@functools.cache
def _parsed_monitor(path: Path, modified_ns: int, size: int) -> np.ndarray:
    rows = np.genfromtxt(path, delimiter=",", skip_header=2, ndmin=2)
    rows.flags.writeable = False
    return rows


def _env0_clock(run: Path | Sequence[Segment], frame_skip: int) -> tuple[np.ndarray, np.ndarray]:
    """
    Timesteps taken and seconds elapsed at each episode end of env 0 (whose Monitor episode lengths count
    ``frame_skip`` emulator frames per timestep on Atari; the no-op and fire frames of a reset are counted too, a few
    dozen per game), over the run's segments.
    """
    steps, seconds = [], []
    for segment, offset in _segment_offsets(run):
        n_envs = len(list(segment.folder.glob("*.monitor.csv")))
        rows = monitor_rows(env0_monitor(segment.folder))
        segment_steps = segment.start + np.cumsum(rows[:, 1]) * n_envs / frame_skip
        kept = _up_to(segment_steps, segment.end)
        steps.append(segment_steps[kept])
        seconds.append(rows[kept, 2] + offset)
    return np.concatenate(steps), np.concatenate(seconds)


def wall_clock_at(run: Path | Sequence[Segment], timesteps: np.ndarray, frame_skip: int = 1) -> np.ndarray:
    """Seconds since the start of training at which the run had taken ``timesteps`` steps (from env 0's Monitor)."""
    steps, seconds = _env0_clock(run, frame_skip)
    return np.interp(timesteps, steps, seconds)


def training_episodes(run: Path | Sequence[Segment]) -> np.ndarray:
    """Rows ``(return, length, seconds)`` of the finished training episodes of all environments, in order of ending."""
    rows = []
    for segment, offset in _segment_offsets(run):
        for path in segment.folder.glob("*.monitor.csv"):
            env_rows = monitor_rows(path)
            if env_rows.size and segment.end is not None:
                env_rows = env_rows[env_rows[:, 2] <= segment.seconds]
            if env_rows.size:
                rows.append(env_rows + np.array([0.0, 0.0, offset]))
    finished = np.concatenate(rows or [np.empty((0, 3))])
    return finished[np.argsort(finished[:, 2], kind="stable")]


def evaluations(run: Path | Sequence[Segment]) -> tuple[np.ndarray, np.ndarray]:
    """Timesteps and mean return of the run's evaluations (``evaluations.npz`` of the zoo's EvalCallback)."""
    timesteps, returns = [], []
    for segment in as_segments(run):
        if not (segment.folder / "evaluations.npz").is_file():
            continue  # a segment cut before its first evaluation
        saved = np.load(segment.folder / "evaluations.npz")
        kept = _up_to(saved["timesteps"], segment.end)
        timesteps.append(saved["timesteps"][kept])
        returns.append(saved["results"][kept].mean(axis=1))
    return np.concatenate(timesteps), np.concatenate(returns)


def final_training_return(run: Path | Sequence[Segment], episodes: int = 100) -> float:
    """Mean return of the last ``episodes`` training episodes over all environments (Monitor files, full games)."""
    return float(training_episodes(run)[-episodes:, 0].mean())


def training_return_records(
    run: Path | Sequence[Segment], frame_skip: int = 1, episodes: int = 100
) -> list[tuple[int, float]]:
    """
    ``(timestep, mean)`` each time the mean return of the last ``episodes`` training episodes reached a new high (the
    episode's end time converted through env 0's clock, which stops at env 0's last finished episode): the first of them
    at or above a level is where the run first reached it, for any level (A2C's final one changes with A2C's runs).
    """
    finished = training_episodes(run)
    if len(finished) < episodes:
        return []
    running_means = np.convolve(finished[:, 0], np.ones(episodes) / episodes, mode="valid")
    highs = np.flatnonzero(running_means > np.maximum.accumulate(np.concatenate(([-np.inf], running_means[:-1]))))
    steps, clock = _env0_clock(run, frame_skip)
    at_steps = np.interp(finished[highs + episodes - 1, 2], clock, steps)
    return [(int(step), float(mean)) for step, mean in zip(at_steps, running_means[highs], strict=True)]


def first_reaching(records: Sequence[Sequence[float]], level: float) -> int | None:
    """The timestep of the first of ``training_return_records`` at or above ``level``."""
    return next((int(step) for step, mean in records if mean >= level), None)


def load_run(env_id: str, algo: str, seed: int, runs: Path | None = None) -> dict | None:
    directory = run_directory(env_id, algo, seed, runs)
    if not (directory / "done.json").is_file():
        return None
    segments = run_segments(directory, algo, env_id)
    timesteps, returns = evaluations(segments)
    threshold = TASKS[env_id]["threshold"]
    reached = np.flatnonzero(returns >= threshold)
    seconds = wall_clock_at(segments, timesteps, task_frame_skip(env_id))
    done = json.loads((directory / "done.json").read_text())
    return dict(
        seed=seed,
        timesteps=timesteps.tolist(),
        returns=returns.tolist(),
        steps_to_threshold=int(timesteps[reached[0]]) if reached.size else None,
        seconds_to_threshold=float(seconds[reached[0]]) if reached.size else None,
        final_return=float(returns[-1]),
        final_training_return=final_training_return(segments),
        training_records=training_return_records(segments, task_frame_skip(env_id)),
        mean_return=float(returns.mean()),
        total_seconds=done["seconds"],
        fps=done["n_timesteps"] / done["seconds"],
    )


def load_runs(env_id: str, algo: str, runs: Path | None = None) -> list[dict]:
    """The finished runs of a task and algorithm, seeds 0-19 (in ``runs``, or the default folder)."""
    return [run for seed in range(20) if (run := load_run(env_id, algo, seed, runs)) is not None]


def table_row(env_id: str, algo: str, runs: list[dict], a2c_level: float | None) -> dict:
    """
    One algorithm's row of the table: each measure's mean and std over its seeds (``a2c_level``: A2C's final one,
    reached or not by each run that has ``training_records``; runs reported before they were kept have none).
    """
    steps = [run["steps_to_threshold"] for run in runs if run["steps_to_threshold"] is not None]
    seconds = [run["seconds_to_threshold"] for run in runs if run["seconds_to_threshold"] is not None]
    with_records = [run["training_records"] for run in runs if "training_records" in run]
    to_a2c_level: list[float] = []
    if a2c_level is not None:
        crossings = (first_reaching(records, a2c_level) for records in with_records)
        to_a2c_level = [crossing for crossing in crossings if crossing is not None]
    return dict(
        env=env_id,
        algo=algo,
        seeds=len(runs),
        reached=len(steps),
        threshold=TASKS[env_id]["threshold"],
        budget=max(run["timesteps"][-1] for run in runs),
        steps_mean=mean_std(steps)[0],
        steps_std=mean_std(steps)[1],
        seconds_mean=mean_std(seconds)[0],
        seconds_std=mean_std(seconds)[1],
        mean_return_mean=mean_std([run["mean_return"] for run in runs])[0],
        mean_return_std=mean_std([run["mean_return"] for run in runs])[1],
        final_return_mean=mean_std([run["final_return"] for run in runs])[0],
        final_return_std=mean_std([run["final_return"] for run in runs])[1],
        training_return_mean=mean_std([run["final_training_return"] for run in runs])[0],
        training_return_std=mean_std([run["final_training_return"] for run in runs])[1],
        a2c_training_level=a2c_level,
        reached_a2c_level=len(to_a2c_level),
        a2c_level_seeds=len(with_records),
        steps_to_a2c_level_mean=mean_std(to_a2c_level)[0],
        steps_to_a2c_level_std=mean_std(to_a2c_level)[1],
        fps_mean=mean_std([run["fps"] for run in runs])[0],
    )


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def previous_results() -> tuple[dict[tuple[str, str], dict], dict[str, dict[str, list[dict]]]]:
    """The rows (by task and algorithm) and curves of the last report, for the runs that are not on this machine."""
    path = RESULTS / "sample_efficiency.json"
    if not path.is_file():
        return {}, {}
    previous = json.loads(path.read_text())
    for row in previous["table"]:
        row.setdefault("a2c_level_seeds", row["seeds"])  # reports that did not count them took every seed
    return {(row["env"], row["algo"]): row for row in previous["table"]}, previous["curves"]


def compact_json(value: object) -> str:
    """JSON indented by one space, with each list of numbers (curves) and each list of such lists (records) on one line."""
    number = r"-?[\d.eE+-]+|null"
    numbers = rf"\[\n(?:\s*(?:{number}),?\n)*\s*\]"  # multi-line, so never within a string
    lists_of_numbers = rf"\[\n(?:\s*\[(?:{number}|, )*\],?\n)*\s*\]"  # once the inner lists are on one line

    def one_line(match: re.Match) -> str:
        return json.dumps(json.loads(match.group()))

    return re.sub(lists_of_numbers, one_line, re.sub(numbers, one_line, json.dumps(value, indent=1)))


def report(keep_seeds: bool = False) -> None:
    """
    Aggregate the finished runs of this machine; a task and algorithm without any keeps its row and curves from the
    last report (the runs folder is not versioned), so rerunning one algorithm updates only its own row. With
    ``keep_seeds``, the last report's runs of the seeds that have no run here are kept beside this machine's (run them
    with the same settings): more seeds for a row without rerunning its first ones.
    """
    previous_rows, previous_curves = previous_results()
    rows, summary = [], {}
    for env_id in TASKS:
        curves, kept = {}, set()
        for algo in ALGOS:
            runs = load_runs(env_id, algo)
            previous = previous_curves.get(env_id, {}).get(algo, []) if (env_id, algo) in previous_rows else []
            if runs and keep_seeds:
                seeds = {run["seed"] for run in runs}
                runs = sorted(runs + [run for run in previous if run["seed"] not in seeds], key=lambda run: run["seed"])
            if runs:
                curves[algo] = runs
            elif previous:
                curves[algo] = previous
                kept.add(algo)
        if not curves:
            continue
        a2c_level = mean_std([run["final_training_return"] for run in curves.get("a2c", [])])[0]
        for algo, runs in curves.items():
            rows.append(previous_rows[(env_id, algo)] if algo in kept else table_row(env_id, algo, runs, a2c_level))
        summary[env_id] = curves
        plot(env_id, curves)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sample_efficiency.json").write_text(compact_json(dict(table=rows, curves=summary)))
    with open(RESULTS / "sample_efficiency.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print_table(rows)
    write_readme_table(rows)


def report_variant(runs: Path) -> None:
    """The table of the runs in another folder (``run --runs``), with A2C's level from the last report; nothing written."""
    previous_rows, _ = previous_results()
    rows = []
    for env_id in TASKS:
        for algo in ALGOS:
            loaded = load_runs(env_id, algo, runs)
            if loaded:
                a2c_level = previous_rows.get((env_id, "a2c"), {}).get("training_return_mean")
                rows.append(table_row(env_id, algo, loaded, a2c_level))
    print_table(rows)


def final_policy_returns(env_id: str, algo: str, seed: int, episodes: int, runs: Path | None = None) -> list[float]:
    """
    Returns of ``episodes`` deterministic episodes of the final policy of a finished run (its last zoo folder's model
    and normalisation statistics), on an environment seeded with ``FINAL_EVALUATION_SEED + seed``.
    """
    if task_frame_skip(env_id) != 1:
        raise ValueError(f"{env_id}: final evaluates tasks without frame skipping only (rl-zoo3 samples Atari actions)")
    from rl_zoo3.utils import create_test_env, get_saved_hyperparams
    from stable_baselines3 import A2C, PPO
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm

    from sb3_acktr import ACKTR

    directory = run_directory(env_id, algo, seed, runs)
    if not (directory / "done.json").is_file():
        raise FileNotFoundError(f"{directory}: no finished run")
    folder = zoo_run_folders(directory, algo, env_id)[-1]
    hyperparams, stats_path = get_saved_hyperparams(str(folder / env_id), test_mode=True)
    env = create_test_env(
        env_id, stats_path=stats_path, seed=FINAL_EVALUATION_SEED + seed, should_render=False, hyperparams=hyperparams
    )
    algorithms: dict[str, type[OnPolicyAlgorithm]] = dict(acktr=ACKTR, a2c=A2C, ppo=PPO)
    algorithm = algorithms[algo]
    model = algorithm.load(folder / f"{env_id}.zip", device="cpu")
    returns, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True, return_episode_rewards=True)
    env.close()
    assert isinstance(returns, list)
    return [float(value) for value in returns]


def print_final_policies(env_id: str, algo: str, seeds: list[int], episodes: int, runs: Path | None = None) -> None:
    """Each seed's final policy over ``episodes`` episodes, and the mean and standard deviation of the seeds' means."""
    means = []
    for seed in seeds:
        returns = final_policy_returns(env_id, algo, seed, episodes, runs)
        means.append(float(np.mean(returns)))
        print(f"{env_id} {algo} seed {seed}: {np.mean(returns):,.1f} ± {np.std(returns):,.1f} over {episodes} episodes")
    print(f"{env_id} {algo} seeds {' '.join(map(str, seeds))}: {np.mean(means):,.1f} ± {np.std(means):,.1f}")


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_table(rows: list[dict]) -> None:
    print(
        "| task | algo | reached / seeds | timesteps to threshold | seconds to threshold | mean return over the run "
        "| final return | last 100 training episodes | timesteps until they reach A2C's final ones | fps |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['env']} (>= {row['threshold']}, {row['budget']:,} steps) | {row['algo']} | "
            f"{row['reached']} / {row['seeds']} | {fmt(row['steps_mean'])} ± {fmt(row['steps_std'])} | "
            f"{fmt(row['seconds_mean'])} ± {fmt(row['seconds_std'])} | "
            f"{fmt(row['mean_return_mean'], 1)} ± {fmt(row['mean_return_std'], 1)} | "
            f"{fmt(row['final_return_mean'], 1)} ± {fmt(row['final_return_std'], 1)} | "
            f"{fmt(row['training_return_mean'], 1)} ± {fmt(row['training_return_std'], 1)} | "
            f"{row['reached_a2c_level']} / {row['a2c_level_seeds']}: {fmt(row['steps_to_a2c_level_mean'])} ± "
            f"{fmt(row['steps_to_a2c_level_std'])} | {fmt(row['fps_mean'])} |"
        )


def _mean_pm_std(mean: float, std: float, seeds: int, digits: int, unit: float = 1, suffix: str = "") -> str:
    spread = f" ± {std / unit:,.{digits}f}{suffix}" if seeds > 1 else ""
    return f"{mean / unit:,.{digits}f}{suffix}{spread}"


def readme_cell(row: dict, measure: str) -> str:
    """One algorithm's cell of the README's results table (see ``README_ROWS`` for the measures)."""
    final_digits = 1 if abs(row["final_return_mean"]) < 100 else 0
    final = _mean_pm_std(row["final_return_mean"], row["final_return_std"], row["seeds"], final_digits)
    if measure == "final":
        return final if row["seeds"] > 1 else f"{final} (1 seed)"
    steps = "-"
    if row["reached"]:
        steps_digits = 1 if TASKS[row["env"]]["budget"] < 1_000_000 else 0
        steps = _mean_pm_std(row["steps_mean"], row["steps_std"], row["reached"], steps_digits, 1_000, "k")
    if measure == "timesteps":
        reached = "" if row["reached"] == row["seeds"] else f"{row['reached']} / {row['seeds']} seeds, "
        return f"{reached}{steps} (final {final})"
    at = f", at {steps}" if row["reached"] else ""
    return f"{row['reached']} / {row['seeds']}{at} (final {final})"


def readme_table(rows: list[dict]) -> str:
    """The README's results table (markdown) from the report's rows: its tasks in ``README_ROWS``, A2C and PPO beside."""
    by_task = {(row["env"], row["algo"]): row for row in rows}
    what = dict(reached="seeds reaching {threshold:g}", timesteps="timesteps to {threshold:g}", final="final return")
    lines = ["| task (budget) | ACKTR | A2C | PPO |", "|---|---|---|---|"]
    for env_id, (name, measure) in README_ROWS.items():
        if (env_id, "acktr") not in by_task:
            continue
        task = TASKS[env_id]
        heading = f"{name} ({task['budget'] / 1e6:g}M)" if task["budget"] >= 1e6 else f"{name} ({task['budget'] / 1e3:g}k)"
        cells = [readme_cell(by_task[env_id, algo], measure) if (env_id, algo) in by_task else "-" for algo in ALGOS]
        lines.append(f"| {heading}, {what[measure].format(**task)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def readme_parts(text: str) -> tuple[str, str, str]:
    """The README's text before its results table (start marker included), the table, and the text from its end marker."""
    start, end = README_MARKERS
    head, found_start, rest = text.partition(start)
    table, found_end, tail = rest.partition(end)
    if not (found_start and found_end):
        raise ValueError(f"{README} has no results table between {start.strip()} and {end}")
    return head + start, table, end + tail


def write_readme_table(rows: list[dict]) -> None:
    """Replace the README's results table (between its markers) with the one of ``rows``."""
    head, _, tail = readme_parts(README.read_text())
    README.write_text(f"{head}{readme_table(rows)}{tail}")


def plot(env_id: str, curves: dict[str, list[dict]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    DOCS.mkdir(exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    for algo, runs in curves.items():
        length = min(len(run["timesteps"]) for run in runs)
        timesteps = np.asarray(runs[0]["timesteps"][:length])
        returns = np.asarray([run["returns"][:length] for run in runs])
        mean, std = returns.mean(axis=0), returns.std(axis=0)
        axis.plot(timesteps, mean, label=f"{algo.upper()} ({len(runs)} seeds)")
        axis.fill_between(timesteps, mean - std, mean + std, alpha=0.2)
    axis.axhline(TASKS[env_id]["threshold"], color="grey", linestyle="--", linewidth=1, label="threshold")
    axis.set_xlabel("timesteps")
    axis.set_ylabel("evaluation return (mean ± std over seeds)")
    axis.set_title(env_id)
    axis.legend()
    figure.tight_layout()
    figure.savefig(DOCS / f"sample_efficiency_{env_id}.png", dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train the missing runs")
    run.add_argument("--env", required=True, choices=list(TASKS))
    run.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    run.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    run.add_argument("--budget", type=int, help="timesteps per run (default: the task's)")
    run.add_argument("--jobs", type=int, default=2)
    run.add_argument("--params", nargs="+", help="KEY:VALUE hyperparameters overriding the sections (rl-zoo3's -params)")
    run.add_argument(
        "--defaults", action="store_true", help="each algorithm's library defaults in the section's environment set-up"
    )
    run.add_argument(
        "--runs", type=Path, help=f"folder of the runs (default: {RUNS.relative_to(ROOT)}; report reads that one)"
    )
    report_parser = commands.add_parser("report", help="aggregate the finished runs")
    report_parser.add_argument("--runs", type=Path, help="print the table of the runs in this folder instead")
    report_parser.add_argument(
        "--keep-seeds", action="store_true", help="keep the last report's runs of the seeds that have no run here"
    )
    final = commands.add_parser("final", help="evaluate the final policies of finished runs again, over more episodes")
    final.add_argument("--env", required=True, choices=[env_id for env_id in TASKS if task_frame_skip(env_id) == 1])
    final.add_argument("--algo", default="acktr", choices=ALGOS)
    final.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    final.add_argument("--episodes", type=int, default=50)
    final.add_argument("--runs", type=Path, help=f"folder of the runs (default: {RUNS.relative_to(ROOT)})")
    args = parser.parse_args()
    if args.command == "final":
        print_final_policies(args.env, args.algo, args.seeds, args.episodes, args.runs.resolve() if args.runs else None)
        return
    if args.command == "report":
        report_variant(args.runs.resolve()) if args.runs else report(args.keep_seeds)
        return
    if (args.params or args.defaults) and args.runs is None:
        parser.error("--params and --defaults need --runs: the default folder holds the sections' runs, which report reads")
    runs = args.runs.resolve() if args.runs else None
    jobs = [
        (args.env, algo, seed, args.budget, args.params, runs, args.defaults) for seed in args.seeds for algo in args.algos
    ]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for message in pool.map(lambda job: train(*job), jobs):
            print(message, flush=True)


if __name__ == "__main__":
    main()
