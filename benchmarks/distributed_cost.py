"""
What data-parallel ACKTR costs: the bytes that each update all-reduces, what they mean on a network, and timesteps
per second with 1 and 2 processes on this machine.

    python benchmarks/distributed_cost.py                 # bytes per update and the all-reduce time on paper
    python benchmarks/distributed_cost.py --fps           # also: timesteps per second, 1 and 2 ranks (torchrun)
    python benchmarks/distributed_cost.py --inverses      # also: an inverse refresh on 2 ranks, every block or half each
    python benchmarks/distributed_cost.py --learning --seeds 0 1 2   # also: CartPole on 2 ranks x 4 environments

Per update, each rank sends its gradient (every trainable parameter) and, when the statistics are due (every update
by default), the new sums of its Kronecker factors (``A``: ``(in + 1)^2``, ``G``: ``out^2`` per layer), in float32.
A ring all-reduce of ``S`` bytes over ``N`` ranks moves ``2 (N - 1) / N * S`` bytes through each rank's link: on paper,
at ``B`` bits per second, ``16 (N - 1) / N * S / B`` seconds (latency and overlap aside). ``--fps`` runs
``learn()`` under ``torchrun --standalone`` on this machine (gloo, one thread per rank) for CartPole (8 environments
per rank) and Atari frames (8 per rank), each rank stepping its own environments. ``--inverses`` times, on 2 ranks
and ``AcktrCNN``'s factors, the two ways to refresh the inverses: every rank decomposes every block, or each block is
decomposed by one rank (blocks assigned by cost, largest first, to the least loaded rank, as kfac-pytorch's KAISA does)
and broadcast to the others (what ``KFAC`` does with a process group). ``--learning`` trains CartPole-v1 with its zoo
section on 2 ranks of 4 environments each (the section's 8 in all) under torchrun, 100k timesteps, evaluations every
5k (10 episodes), and prints the timesteps at which the evaluation return first reached 475 and the final one, to
compare with one process of 8 environments (``benchmarks/sample_efficiency.py``).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import VecFrameStack

from sb3_acktr import ACKTR, AcktrCNN

NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "AcktrCNN": ("CnnPolicy", dict(features_extractor_class=AcktrCNN)),
    "NatureCNN": ("CnnPolicy", dict(features_extractor_class=NatureCNN)),
    "MLP 64-64 (CartPole)": ("MlpPolicy", {}),
}
RANKS = (8, 64)
GIGABITS = (10, 100)


def bytes_per_update(policy: str, policy_kwargs: dict[str, Any]) -> tuple[int, int]:
    """Bytes of the gradient and of the new factor sums that one update all-reduces (float32)."""
    env: Any = FakeImageEnv(screen_height=84, screen_width=84, n_channels=4) if policy == "CnnPolicy" else "CartPole-v1"
    kfac = ACKTR(policy, env, policy_kwargs=policy_kwargs, device="cpu").kfac
    gradient = sum(param.numel() for group in kfac.param_groups for param in group["params"])
    factors = 0
    for block in kfac.blocks:
        inputs = block.weight[0].numel() + int(block.bias is not None)
        factors += inputs**2 + block.weight.shape[0] ** 2
    return 4 * gradient, 4 * factors


def all_reduce_seconds(n_bytes: int, ranks: int, gigabits: float) -> float:
    return 2 * (ranks - 1) / ranks * n_bytes * 8 / (gigabits * 1e9)


def print_bytes() -> None:
    columns = ["network", "gradient MiB", "factors MiB"]
    columns += [f"{ranks} ranks, {gb} Gb/s, ms" for ranks in RANKS for gb in GIGABITS]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for name, (policy, policy_kwargs) in NETWORKS.items():
        gradient, factors = bytes_per_update(policy, policy_kwargs)
        times = [1000 * all_reduce_seconds(gradient + factors, ranks, gb) for ranks in RANKS for gb in GIGABITS]
        cells = [name, f"{gradient / 2**20:.1f}", f"{factors / 2**20:.1f}", *(f"{t:.1f}" for t in times)]
        print("| " + " | ".join(cells) + " |", flush=True)


def worker(task: str, timesteps: int) -> None:
    """Run under torchrun: learn, and rank 0 prints the timesteps per second of all ranks together."""
    th.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    if task == "atari":
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        env = VecFrameStack(make_atari_env("PongNoFrameskip-v4", n_envs=8, seed=rank), n_stack=4)
        model = ACKTR("CnnPolicy", env, stats_batch_size=160, vf_kl_clip=None, device="cpu", seed=0)
    else:
        cartpole = make_vec_env("CartPole-v1", n_envs=8)
        model = ACKTR("MlpPolicy", cartpole, stats_update_interval=1, device="cpu", seed=0)  # factors joined at every update
    model.learn(model.n_steps * model.n_envs)  # start-up: first inverses and allocations
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    if rank == 0:
        print(json.dumps(dict(fps=timesteps / seconds)))


def inverse_worker(rounds: int = 5) -> None:
    """Run under torchrun: median ms of an inverse refresh of AcktrCNN's factors, both ways; rank 0 prints them."""
    import statistics

    import torch.distributed as dist

    th.set_num_threads(1)
    env = FakeImageEnv(screen_height=84, screen_width=84, n_channels=4)
    model = ACKTR("CnnPolicy", env, n_steps=8, device="cpu", distributed=True)
    model.learn(8 * 2 * dist.get_world_size())  # factors of two updates
    kfac, damping = model.kfac, model.kfac.param_groups[0]["damping"]
    factors = {block: pair for block in kfac.blocks if (pair := kfac.factors(block)) is not None}
    ways = {
        "every block on every rank": lambda: kfac._compute_inverses(factors, damping),
        "one rank per block, broadcast (KFAC's way)": lambda: kfac._inverses_shared_by_ranks(factors, damping),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, refresh in ways.items():
            dist.barrier()
            start = time.perf_counter()
            refresh()
            dist.barrier()
            times[name].append(1000 * (time.perf_counter() - start))
    if dist.get_rank() == 0:
        print(json.dumps({name: statistics.median(values) for name, values in times.items()}))


def run_on_ranks(ranks: int, *arguments: str, env: dict[str, str] | None = None) -> str:
    """The standard output of ``torchrun --standalone`` with ``ranks`` processes on this machine, running ``arguments``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *arguments]
    return subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout


def worker_result(ranks: int, *arguments: str) -> Any:
    """What this script's ``--worker`` printed last (rank 0's JSON line), run on ``ranks`` processes."""
    return json.loads(run_on_ranks(ranks, __file__, "--worker", *arguments).strip().splitlines()[-1])


def measured_fps(task: str, ranks: int, timesteps: int) -> float:
    return float(worker_result(ranks, task, "--timesteps", str(timesteps))["fps"])


def print_inverses() -> None:
    print("| inverse refresh of AcktrCNN's factors, 2 ranks | median ms |")
    print("|---|---|")
    for name, milliseconds in worker_result(2, "inverses").items():
        print(f"| {name} | {milliseconds:.0f} |")


def cartpole_on_two_ranks(seed: int, folder: Path) -> tuple[int | None, float]:
    """Timesteps to an evaluation return of 475 (None if never) and the final evaluation return of one zoo run."""
    arguments = ["-m", "sb3_acktr.zoo", "train", "--env", "CartPole-v1", "--seed", str(seed), "-f", str(folder)]
    arguments += [
        "--eval-freq",
        "5000",
        "--eval-episodes",
        "10",
        "--n-eval-envs",
        "1",
        "--verbose",
        "0",
        "-params",
        "n_envs:4",
    ]
    run_on_ranks(2, *arguments, env=dict(os.environ, OMP_NUM_THREADS="1"))
    (run,) = (folder / "acktr").glob("CartPole-v1_*")
    evaluations = np.load(run / "evaluations.npz")
    returns = evaluations["results"].mean(axis=1)
    reached = np.flatnonzero(returns >= 475)
    return (int(evaluations["timesteps"][reached[0]]) if reached.size else None), float(returns[-1])


def print_learning(seeds: list[int]) -> None:
    print("| CartPole-v1, 2 ranks x 4 environments | timesteps to 475 | final evaluation |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for seed in seeds:
            steps, final = cartpole_on_two_ranks(seed, Path(folder) / f"seed_{seed}")
            print(f"| seed {seed} | {steps if steps is not None else 'not reached'} | {final:.1f} |", flush=True)


def print_fps() -> None:
    print("| task | 1 rank fps | 2 ranks fps | ratio |")
    print("|---|---|---|---|")
    for task, timesteps in (("cartpole", 40_000), ("atari", 6_400)):
        one, two = measured_fps(task, 1, timesteps), measured_fps(task, 2, timesteps)
        print(f"| {task} | {one:.0f} | {two:.0f} | {two / one:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fps", action="store_true", help="also measure timesteps per second with 1 and 2 ranks")
    parser.add_argument("--inverses", action="store_true", help="also time an inverse refresh on 2 ranks, two ways")
    parser.add_argument("--learning", action="store_true", help="also train CartPole on 2 ranks x 4 environments")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--worker", choices=["cartpole", "atari", "inverses"], help=argparse.SUPPRESS)
    parser.add_argument("--timesteps", type=int, default=40_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "inverses":
        inverse_worker()
        return
    if args.worker:
        worker(args.worker, args.timesteps)
        return
    print_bytes()
    if args.inverses:
        print_inverses()
    if args.fps:
        print_fps()
    if args.learning:
        print_learning(args.seeds)


if __name__ == "__main__":
    main()
