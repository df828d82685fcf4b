"""
What an ACKTR run does update by update: trains one seed with a section of the zoo's hyperparameter file (and
overrides), or with the library defaults on a task of the unseen-task panel, logs every update to CSV and prints, for
each tenth of the budget, the medians of the KL per update, the trust-region scales, the entropy, the value loss and
explained variance, the training return, and the deterministic evaluation return (10 episodes every 2.5k timesteps).

    python benchmarks/training_diagnostics.py --env CartPole-v1 --seed 1
    python benchmarks/training_diagnostics.py --env CartPole-v1 --seed 1 --params vf_coef:0.1 --folder /tmp/cartpole
    python benchmarks/training_diagnostics.py --env Blackjack-v1 --seed 0 --budget 20000     # a panel task's defaults

``--params`` takes rl-zoo3's ``KEY:VALUE`` form (``lin_<initial value>`` for a linear schedule, ``None`` or
``null``). A section's environments are first_reach.py's (the section's ``n_envs`` and normalisation), a panel task's
unseen_tasks.py's (8 environments, ``VecNormalize`` where the panel normalises).
"""

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch as th
import unseen_tasks
import yaml
from first_reach import TASKS, make_envs
from rl_zoo3.utils import SimpleLinearSchedule
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.logger import configure

from sb3_acktr import ACKTR
from sb3_acktr.zoo import hyperparameter_sections

# Keys of a section that rl-zoo3 consumes itself (environment, budget, policy name).
ZOO_KEYS = ("n_envs", "n_timesteps", "policy", "normalize", "env_wrapper", "frame_stack")
COLUMNS = {
    "time/total_timesteps": "timesteps",
    "train/kl": "kl",
    "kfac/trust_region_scale": "scale",
    "kfac/value/trust_region_scale": "critic scale",
    "train/step_size_factor": "step factor",
    "train/entropy_loss": "-entropy",
    "train/value_loss": "value loss",
    "train/explained_variance": "explained var",
    "rollout/ep_rew_mean": "training return",
}


def hyperparameter(value: Any) -> Any:
    """A value of the file or of ``--params``: ``lin_<x>`` becomes the linear schedule from x to 0."""
    if isinstance(value, str) and value.startswith("lin_"):
        return SimpleLinearSchedule(float(value[len("lin_") :]))
    return value


def section_arguments(env_id: str, params: list[str]) -> dict[str, Any]:
    """The ACKTR arguments of a task: its zoo section (none for a panel task: the library defaults), then ``params``."""
    section = {} if env_id in unseen_tasks.PANEL else hyperparameter_sections()[env_id]
    for param in params:
        key, _, value = param.partition(":")
        section[key] = None if value == "None" else yaml.safe_load(value)
    return {key: hyperparameter(value) for key, value in section.items() if key not in ZOO_KEYS}


def default_budget(env_id: str) -> int:
    return unseen_tasks.PANEL[env_id].budget if env_id in unseen_tasks.PANEL else int(TASKS[env_id]["budget"])


def train(env_id: str, seed: int, params: list[str], folder: Path, budget: int | None = None) -> None:
    if env_id in unseen_tasks.PANEL:
        env, eval_env = unseen_tasks.make_vec_envs(env_id, seed)
        policy = unseen_tasks.PANEL[env_id].policy
    else:
        env, eval_env = make_envs(env_id, seed)
        policy = "MlpPolicy"
    model = ACKTR(policy, env, seed=seed, log_kl=True, **section_arguments(env_id, params))
    model.set_logger(configure(str(folder), ["csv"]))
    evaluation = EvalCallback(eval_env, eval_freq=2_500 // env.num_envs, n_eval_episodes=10, log_path=str(folder), verbose=0)
    model.learn(budget or default_budget(env_id), callback=evaluation, log_interval=1)


def summary(folder: Path, budget: int) -> pd.DataFrame:
    """Medians of each tenth of the budget, with the mean of its evaluations."""
    log = pd.read_csv(folder / "progress.csv")
    log = log[[column for column in COLUMNS if column in log]].rename(columns=COLUMNS)
    phase = np.minimum(log["timesteps"] * 10 // budget, 9)
    table = log.groupby(phase).median()
    evaluations = np.load(folder / "evaluations.npz")
    returns = pd.Series(evaluations["results"].mean(axis=1))
    table["evaluation"] = returns.groupby(np.minimum(evaluations["timesteps"] * 10 // budget, 9)).mean()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=[*TASKS, *unseen_tasks.PANEL])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", nargs="*", default=[], help="KEY:VALUE overrides of the section (or defaults)")
    parser.add_argument("--budget", type=int, help="timesteps (default: the task's)")
    parser.add_argument("--folder", type=Path, help="where the CSV log and evaluations go (default: a temporary folder)")
    args = parser.parse_args()
    th.set_num_threads(1)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="acktr_diagnostics_"))
    budget = args.budget or default_budget(args.env)
    train(args.env, args.seed, args.params, folder, budget)
    pd.set_option("display.width", 200)
    print(f"{args.env} seed {args.seed} {' '.join(args.params)} (log: {folder})")
    print(summary(folder, budget).to_string(float_format=lambda x: f"{x:.3g}"))


if __name__ == "__main__":
    main()
