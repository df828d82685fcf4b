"""
Quick tuning of ACKTR on the classic tasks: timesteps until the mean deterministic evaluation return first reaches the
threshold, per seed, for one setting. Training stops there, so a setting costs seconds to minutes; use
``sample_efficiency.py`` for whole learning curves.

    python benchmarks/first_reach.py --env Acrobot-v1 --kwargs "dict(vf_kl_clip=0.001)" --seeds 0 1 2 3 4
    python benchmarks/first_reach.py --env CartPole-v1 --algo a2c        # rl-zoo3's A2C settings, for comparison

Each setting starts from the task's base below (rl-zoo3's/SB2's environment settings, ``ent_coef`` 0); ``--kwargs``
adds or overrides constructor arguments. Evaluation: 10 episodes every ``--eval-every`` timesteps on a separate env
(with synchronised normalisation statistics). Output: one JSON line; a run that never reaches the threshold counts as
twice the budget in the mean.
"""

import argparse
import json
import time

import numpy as np
import torch as th
from sample_efficiency import TASKS as CURVE_TASKS
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_acktr import ACKTR

# The environment settings of each task; threshold and budget are the sample-efficiency benchmark's.
TASKS = {
    env_id: dict(threshold=CURVE_TASKS[env_id]["threshold"], budget=CURVE_TASKS[env_id]["budget"], **settings)
    for env_id, settings in (("CartPole-v1", dict(n_envs=8, normalize=False)), ("Acrobot-v1", dict(n_envs=16, normalize=True)))
}


def make_envs(env_id: str, seed: int) -> tuple[VecEnv, VecEnv]:
    task = TASKS[env_id]
    env = make_vec_env(env_id, n_envs=int(task["n_envs"]), seed=seed)
    eval_env = make_vec_env(env_id, n_envs=1, seed=seed + 1000)
    if task["normalize"]:
        env, eval_env = VecNormalize(env), VecNormalize(eval_env, training=False, norm_reward=False)
    return env, eval_env


def first_reach(env_id: str, algo: str, kwargs: dict, seed: int, eval_every: int) -> int | None:
    task = TASKS[env_id]
    env, eval_env = make_envs(env_id, seed)
    algorithm = ACKTR if algo == "acktr" else A2C
    model = algorithm("MlpPolicy", env, seed=seed, **{"ent_coef": 0.0, **kwargs})
    stop = StopTrainingOnRewardThreshold(task["threshold"], verbose=0)
    callback = EvalCallback(
        eval_env, eval_freq=max(eval_every // int(task["n_envs"]), 1), n_eval_episodes=10, callback_on_new_best=stop, verbose=0
    )
    model.learn(int(task["budget"]), callback=callback)
    return model.num_timesteps if callback.best_mean_reward >= task["threshold"] else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=list(TASKS))
    parser.add_argument("--algo", default="acktr", choices=["acktr", "a2c"])
    parser.add_argument("--kwargs", default="dict()", help="constructor arguments, as a Python dict expression")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--eval-every", type=int, default=2500)
    args = parser.parse_args()
    th.set_num_threads(1)
    kwargs = eval(args.kwargs)
    start = time.time()
    reached = [first_reach(args.env, args.algo, kwargs, seed, args.eval_every) for seed in args.seeds]
    counted = [steps if steps is not None else 2 * TASKS[args.env]["budget"] for steps in reached]
    result = dict(env=args.env, algo=args.algo, kwargs=args.kwargs, reached=reached, mean=float(np.mean(counted)))
    result.update(std=float(np.std(counted)), n_reached=sum(steps is not None for steps in reached))
    print(json.dumps(dict(result, seconds=round(time.time() - start))), flush=True)


if __name__ == "__main__":
    main()
