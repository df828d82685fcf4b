"""
The library defaults on tasks that no section of ``hyperparams/acktr.yml`` covers and that no default was chosen on:
ACKTR, A2C, PPO (SB3) and TRPO (sb3-contrib), each called as a user would, ``ALGO(policy, env, seed=seed)``, with the
same environments, wrappers, budget and evaluations per task.

    python benchmarks/unseen_tasks.py run --seeds 0 1 2                 # resumable: the runs in the CSV are kept
    python benchmarks/unseen_tasks.py run --half tuning --algos acktr --params stats_update_interval=4   # a variant
    python benchmarks/unseen_tasks.py report                            # table (markdown) and plot

The panel is split in two halves: defaults may be chosen on the ``tuning`` tasks only; the ``held-out`` ones are only
reported. Each run trains in a subprocess with one thread (``--jobs`` at a time) and appends one row to
``benchmarks/results/unseen_tasks.csv``: ``final_return`` is the final policy's mean return over ``final_episodes``
deterministic episodes (sampled actions on Atari), ``mean_return`` the mean of the evaluations over the run
(``eval_episodes`` episodes every ``eval_freq`` timesteps; the area under the curve), ``seconds`` the run's training
time. ``--params KEY=VALUE`` (Python literals) change ACKTR's constructor arguments; such a run is a variant, reported
beside the defaults. The Atari games (``CnnPolicy``, the panel's 8 environments with 4 stacked frames) save a checkpoint
every ``CHECKPOINT_FREQ`` timesteps in ``benchmarks/results/runs/unseen_tasks/`` and a run cut short goes on from its
last one.
"""

import argparse
import ast
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

ROOT = Path(__file__).resolve().parents[1]
CSV_PATH = ROOT / "benchmarks" / "results" / "unseen_tasks.csv"
PLOT_PATH = ROOT / "docs" / "unseen_tasks.png"
FIELDS = ("env", "algo", "params", "seed", "timesteps", "final_return", "mean_return", "seconds")
ALGOS = ("acktr", "a2c", "ppo", "trpo")
N_ENVS = 8


class Task(NamedTuple):
    """
    A panel task: its half, budget, evaluation schedule, whether observations are normalised (``VecNormalize``), and
    whether it is an Atari game (SB3's ``make_atari_env`` and 4 stacked frames; evaluated on full games with sampled
    actions, as rl-zoo3 evaluates Atari, and checkpointed every ``CHECKPOINT_FREQ`` timesteps so that a cut run resumes).
    """

    half: str
    budget: int
    eval_freq: int
    normalize: bool
    policy: str = "MlpPolicy"
    eval_episodes: int = 10
    final_episodes: int = 20
    atari: bool = False


PANEL: dict[str, Task] = {
    "InvertedDoublePendulum-v5": Task("tuning", 150_000, 15_000, normalize=True, eval_episodes=5),
    "Reacher-v5": Task("tuning", 150_000, 15_000, normalize=True),
    "Taxi-v4": Task("tuning", 150_000, 15_000, normalize=False),
    "MountainCarContinuous-v0": Task("tuning", 100_000, 10_000, normalize=False, eval_episodes=5),
    "BreakoutNoFrameskip-v4": Task(
        "tuning", 500_000, 50_000, False, "CnnPolicy", eval_episodes=5, final_episodes=10, atari=True
    ),
    "InvertedPendulum-v5": Task("held-out", 100_000, 10_000, normalize=True, eval_episodes=5),
    "Pusher-v5": Task("held-out", 150_000, 15_000, normalize=True),
    "Blackjack-v1": Task("held-out", 100_000, 10_000, normalize=False, eval_episodes=200, final_episodes=2_000),
    "FrozenLake-v1": Task("held-out", 100_000, 10_000, normalize=False, eval_episodes=100, final_episodes=1_000),
    "SimpleMultiObsEnv": Task("held-out", 50_000, 5_000, normalize=False, policy="MultiInputPolicy"),
    "AsterixNoFrameskip-v4": Task(
        "held-out", 500_000, 50_000, False, "CnnPolicy", eval_episodes=5, final_episodes=10, atari=True
    ),
}
# A run of an Atari task saves the model and its evaluations this often (timesteps) and resumes from the last save.
CHECKPOINT_FREQ = 100_000
CHECKPOINTS = ROOT / "benchmarks" / "results" / "runs" / "unseen_tasks"


def make_env(env_id: str):  # type: ignore[no-untyped-def]
    """One environment of a panel task (Blackjack's tuple observation as a MultiDiscrete one, which SB3 takes)."""
    import gymnasium as gym

    if env_id == "SimpleMultiObsEnv":
        from stable_baselines3.common.envs import SimpleMultiObsEnv

        return gym.wrappers.TimeLimit(SimpleMultiObsEnv(random_start=True), max_episode_steps=100)
    env = gym.make(env_id)
    if isinstance(env.observation_space, gym.spaces.Tuple):
        sizes = [int(space.n) for space in env.observation_space.spaces if isinstance(space, gym.spaces.Discrete)]
        multi_discrete = gym.spaces.MultiDiscrete(sizes)
        env = gym.wrappers.TransformObservation(env, lambda obs: np.asarray(obs, dtype=np.int64), multi_discrete)
    return env


def make_vec_envs(env_id: str, seed: int):  # type: ignore[no-untyped-def]
    """The training environments (``N_ENVS``) and the evaluation one, normalised alike where the task says so."""
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecEnv, VecFrameStack, VecNormalize, VecTransposeImage

    env: VecEnv
    eval_env: VecEnv
    if PANEL[env_id].atari:
        import ale_py
        import gymnasium as gym

        gym.register_envs(ale_py)
        env = VecFrameStack(make_atari_env(env_id, n_envs=N_ENVS, seed=seed), n_stack=4)
        eval_env = VecFrameStack(make_atari_env(env_id, n_envs=1, seed=seed + 10_000), n_stack=4)
        return env, VecTransposeImage(eval_env)  # as SB3 wraps the training images
    env = make_vec_env(lambda: make_env(env_id), n_envs=N_ENVS, seed=seed)
    eval_env = make_vec_env(lambda: make_env(env_id), n_envs=1, seed=seed + 10_000)
    if PANEL[env_id].normalize:
        env = VecNormalize(env)
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
    return env, eval_env


def algorithm_class(algo: str):  # type: ignore[no-untyped-def]
    if algo == "acktr":
        from sb3_acktr import ACKTR

        return ACKTR
    import sb3_contrib
    import stable_baselines3

    return getattr(stable_baselines3 if algo in ("a2c", "ppo") else sb3_contrib, algo.upper())


def parse_params(params: str) -> dict[str, object]:
    """``"key=value key=value"`` (Python literals) as keyword arguments."""
    pairs = (item.split("=", 1) for item in params.split())
    return {key: ast.literal_eval(value) for key, value in pairs}


def train_one(env_id: str, algo: str, seed: int, params: str = "", checkpoints: Path = CHECKPOINTS) -> dict[str, object]:
    """One run of the panel: its row of the CSV (an Atari run resumes from its last checkpoint in ``checkpoints``)."""
    import torch as th
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import sync_envs_normalization

    th.set_num_threads(1)
    task = PANEL[env_id]
    env, eval_env = make_vec_envs(env_id, seed)
    folder = checkpoints / env_id / (f"{algo}[{params}]" if params else algo) / f"seed_{seed}"
    model, progress = resume(folder, algo, env) if task.atari else (None, new_progress())
    if model is None:
        model = algorithm_class(algo)(task.policy, env, seed=seed, device="cpu", **parse_params(params))
    with tempfile.TemporaryDirectory() as log_path:  # EvalCallback keeps its results only when it writes them
        evaluation = EvalCallback(
            eval_env,
            eval_freq=task.eval_freq // N_ENVS,
            n_eval_episodes=task.eval_episodes,
            log_path=log_path,
            deterministic=not task.atari,
            warn=False,
        )
        evaluation.evaluations_timesteps, evaluation.evaluations_results = progress["timesteps"], progress["results"]
        evaluation.n_calls = model.num_timesteps // N_ENVS  # a resumed run evaluates at the same timesteps
        callbacks = [evaluation, Checkpoint(folder, evaluation, progress["seconds"])] if task.atari else [evaluation]
        start = time.perf_counter()
        remaining = max(task.budget - model.num_timesteps, 0)
        model.learn(remaining, callback=callbacks, reset_num_timesteps=model.num_timesteps == 0)
        seconds = progress["seconds"] + time.perf_counter() - start
    sync_envs_normalization(env, eval_env)
    returns, _ = evaluate_policy(model, eval_env, n_eval_episodes=task.final_episodes, deterministic=not task.atari)
    if model.num_timesteps >= task.budget:  # finished: its checkpoint must not start another run
        shutil.rmtree(folder, ignore_errors=True)
    return dict(
        env=env_id,
        algo=algo,
        params=params,
        seed=seed,
        timesteps=model.num_timesteps,
        final_return=round(float(np.mean(returns)), 4),
        mean_return=round(float(np.mean(evaluation.evaluations_results)), 4),
        seconds=round(seconds, 1),
    )


def new_progress() -> dict[str, Any]:
    """The progress of a run that starts: no evaluation, no training time."""
    return dict(timesteps=[], results=[], seconds=0.0)


def resume(folder: Path, algo: str, env) -> tuple[Any, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The model and the progress (evaluations, training seconds) of a run's last checkpoint, or ``(None, empty)``."""
    if not (folder / "latest").is_file():
        return None, new_progress()
    checkpoint = folder / (folder / "latest").read_text()
    model = algorithm_class(algo).load(checkpoint / "model.zip", env=env, device="cpu")
    progress = json.loads((checkpoint / "progress.json").read_text())
    # An ACKTR checkpoint resumes at the start of the rollout it was saved in: the evaluations after it are made again.
    kept = [index for index, step in enumerate(progress["timesteps"]) if step <= model.num_timesteps]
    progress["timesteps"] = [progress["timesteps"][index] for index in kept]
    progress["results"] = [progress["results"][index] for index in kept]
    return model, progress


class Checkpoint(BaseCallback):
    """
    Saves the model and the run's progress (its evaluations so far and training seconds) every ``CHECKPOINT_FREQ``
    timesteps into a folder of their own, then points the file ``latest`` at it (renamed into place: a run cut while
    saving resumes from the previous checkpoint).
    """

    def __init__(self, folder: Path, evaluation: EvalCallback, seconds: float) -> None:
        super().__init__()
        self.folder, self.evaluation, self.seconds = folder, evaluation, seconds

    def _on_training_start(self) -> None:
        self.start = time.perf_counter()
        self.next_save = (self.num_timesteps // CHECKPOINT_FREQ + 1) * CHECKPOINT_FREQ

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_save:
            checkpoint = self.folder / f"at_{self.num_timesteps}"
            checkpoint.mkdir(parents=True, exist_ok=True)
            self.model.save(checkpoint / "model.zip")
            progress = dict(
                timesteps=[int(step) for step in self.evaluation.evaluations_timesteps],
                results=[[float(value) for value in result] for result in self.evaluation.evaluations_results],
                seconds=self.seconds + time.perf_counter() - self.start,
            )
            (checkpoint / "progress.json").write_text(json.dumps(progress))
            (self.folder / "latest.tmp").write_text(checkpoint.name)
            os.replace(self.folder / "latest.tmp", self.folder / "latest")
            for previous in self.folder.glob("at_*"):
                if previous != checkpoint:
                    shutil.rmtree(previous)
            self.next_save += CHECKPOINT_FREQ
        return True


def read_rows(path: Path = CSV_PATH) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def append_row(row: dict[str, object], path: Path = CSV_PATH) -> None:
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def run_in_subprocess(env_id: str, algo: str, seed: int, params: str) -> dict[str, object]:
    """``train_one`` in a one-thread subprocess (a crash is a failed run, not a failed panel)."""
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, __file__, "one", "--env", env_id, "--algo", algo, "--seed", str(seed), "--params", params]
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment, cwd=ROOT).stdout
    return json.loads(output.strip().splitlines()[-1])


def run(env_ids: list[str], algos: list[str], seeds: list[int], params: str, jobs: int, path: Path = CSV_PATH) -> None:
    """Train the runs that the CSV does not hold yet, ``jobs`` at a time, appending each row as it finishes."""
    done = {(row["env"], row["algo"], row["params"], int(row["seed"])) for row in read_rows(path)}
    todo = [
        (env_id, algo, seed, params if algo == "acktr" else "")
        for seed in seeds
        for env_id in env_ids
        for algo in algos
        if (env_id, algo, params if algo == "acktr" else "", seed) not in done
    ]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_in_subprocess, *job): job for job in todo}
        for future in as_completed(futures):
            try:
                row = future.result()
            except subprocess.CalledProcessError as error:
                print(f"{futures[future]} failed:\n{error.stderr[-3000:]}", flush=True)
                continue
            append_row(row, path)
            print(json.dumps(row), flush=True)


def summary(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per task and algorithm (variants named ``acktr[params]``): mean and std over seeds of both returns, and speed."""
    grouped: dict[tuple[str, str], list[dict[str, str]]] = {}
    for row in rows:
        name = f"{row['algo']}[{row['params']}]" if row["params"] else row["algo"]
        grouped.setdefault((row["env"], name), []).append(row)
    result = {}
    for key, runs in grouped.items():
        final = [float(run["final_return"]) for run in runs]
        mean = [float(run["mean_return"]) for run in runs]
        fps = [float(run["timesteps"]) / float(run["seconds"]) for run in runs]
        result[key] = dict(
            seeds=len(runs),
            final=float(np.mean(final)),
            final_std=float(np.std(final)),
            mean=float(np.mean(mean)),
            fps=float(np.median(fps)),
        )
    return result


def report(path: Path = CSV_PATH, plot_path: Path | None = PLOT_PATH) -> str:
    """The panel's table in markdown (final return ± std over seeds, mean evaluation over the run), and its plot."""
    table = summary(read_rows(path))
    found = {name for _, name in table}
    names = [name for name in ALGOS if name in found] + sorted(found - set(ALGOS))
    lines = [f"| task (half, budget) | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]
    for env_id, task in PANEL.items():
        cells = []
        for name in names:
            cell = table.get((env_id, name))
            cells.append("-" if cell is None else f"{cell['final']:,.2f} ± {cell['final_std']:,.2f} ({cell['mean']:,.2f})")
        if any(cell != "-" for cell in cells):
            lines.append(f"| {env_id} ({task.half}, {task.budget // 1000}k) | {' | '.join(cells)} |")
    if plot_path is not None:
        plot(table, names, plot_path)
    return "\n".join(lines)


def short_number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def readme_table(path: Path = CSV_PATH) -> str:
    """The README's short table: each algorithm's library defaults, final return averaged over the seeds."""
    table = summary(read_rows(path))
    lines = ["| task without a section (budget) | ACKTR | A2C | PPO | TRPO |", "|---|---|---|---|---|"]
    for env_id, task in PANEL.items():
        cells = [short_number(table[env_id, algo]["final"]) if (env_id, algo) in table else "-" for algo in ALGOS]
        if cells[0] != "-":
            lines.append(f"| {env_id} ({task.budget // 1000}k) | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(table: dict[tuple[str, str], dict[str, float]], names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env_ids = [env_id for env_id in PANEL if any((env_id, name) in table for name in names)]
    columns = 3
    rows = -(-len(env_ids) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows))
    for axis, env_id in zip(np.ravel(axes), env_ids, strict=False):
        shown = [name for name in names if (env_id, name) in table]
        finals = [table[env_id, name]["final"] for name in shown]
        spreads = [table[env_id, name]["final_std"] for name in shown]
        axis.bar(range(len(shown)), finals, yerr=spreads, color=[f"C{names.index(name)}" for name in shown])
        axis.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=7)
        axis.set_title(f"{env_id} ({PANEL[env_id].half})", fontsize=9)
    for axis in np.ravel(axes)[len(env_ids) :]:
        axis.axis("off")
    figure.suptitle("final return of the library defaults (mean ± std over seeds)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="train the runs missing from the CSV")
    run_parser.add_argument("--envs", nargs="+", choices=list(PANEL), help="default: every task of --half")
    run_parser.add_argument("--half", choices=("tuning", "held-out", "all"), default="all")
    run_parser.add_argument("--algos", nargs="+", choices=ALGOS, default=list(ALGOS))
    run_parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    run_parser.add_argument("--params", nargs="*", default=[], help="ACKTR's KEY=VALUE arguments (a variant)")
    run_parser.add_argument("--jobs", type=int, default=2)
    one = commands.add_parser("one", help="one run, its row printed as JSON")
    one.add_argument("--env", required=True, choices=list(PANEL))
    one.add_argument("--algo", required=True, choices=ALGOS)
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--params", default="")
    report_parser = commands.add_parser("report", help="the table and the plot")
    report_parser.add_argument("--readme", action="store_true", help="the README's short table instead")
    args = parser.parse_args()
    if args.command == "one":
        print(json.dumps(train_one(args.env, args.algo, args.seed, args.params)))
    elif args.command == "run":
        env_ids = args.envs or [env_id for env_id, task in PANEL.items() if args.half in ("all", task.half)]
        run(env_ids, args.algos, args.seeds, " ".join(args.params), args.jobs)
    else:
        print(readme_table() if args.readme else report())


if __name__ == "__main__":
    main()
