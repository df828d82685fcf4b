"""
Train ACKTR data-parallel on several processes: each process (rank) steps its own environments, and every update joins
the ranks' gradients and Kronecker factors. Launch it with torchrun (run alone, it trains on one process):

    torchrun --standalone --nproc_per_node=2 examples/train_distributed.py
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 examples/train_distributed.py

Rank 0 logs, evaluates and saves; ``--timesteps`` counts the timesteps of all ranks.
"""

import argparse
import os
from pathlib import Path

import torch as th
import torch.distributed as dist
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_acktr import ACKTR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--n-envs", type=int, default=4, help="environments per rank")
    parser.add_argument("--timesteps", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-dir", default="acktr_distributed")
    args = parser.parse_args()
    th.set_num_threads(1)  # the ranks share the machine's cores

    first_rank = int(os.environ.get("RANK", "0")) == 0  # set by torchrun
    # Each rank seeds its environments from seed + rank * n_envs (done by ACKTR under torchrun).
    env = make_vec_env(args.env, n_envs=args.n_envs)
    model = ACKTR("MlpPolicy", env, ent_coef=0.0, seed=args.seed, verbose=int(first_rank))
    callback = None
    if first_rank:  # evaluation is rank 0's alone: no other rank waits for it
        callback = EvalCallback(
            make_vec_env(args.env, n_envs=1, seed=args.seed + 1000),
            eval_freq=10_000 // args.n_envs,
            best_model_save_path=args.save_dir,
        )
    model.learn(total_timesteps=args.timesteps, callback=callback, log_interval=10)
    model.save(Path(args.save_dir) / "final_model")  # written by rank 0 only
    if dist.is_initialized():
        dist.barrier()  # no rank leaves the group while another still talks to it
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
