"""
Seconds to a task's threshold without the noise of shared cores: each algorithm's training speed (timesteps per second
of ``python -m sb3_acktr.zoo train`` with its hyperparameters, one thread as in the benchmark's runs, no evaluation,
the algorithms one after the other) times the timesteps its benchmark runs needed to reach the threshold (the
timesteps column of ``benchmarks/results/sample_efficiency.json``). Nothing else should run meanwhile.

    python benchmarks/training_speed.py --env BreakoutNoFrameskip-v4 --timesteps 40000 --rounds 2

Speed is SB3's ``time/fps`` at the end of ``learn()`` (timesteps since the start of ``learn()`` over its seconds:
rollouts and updates, not the process start or the saving); the median over ``--rounds`` rounds, each of which runs
every algorithm once.
"""

import argparse
import json
import re
import statistics
import subprocess
import tempfile
from pathlib import Path

from sample_efficiency import (
    ALGOS,
    RESULTS,
    ROOT,
    TASKS,
    hyperparameters_option,
    load_runs,
    mean_std,
    one_thread_environment,
    zoo_train_command,
)

FPS_LINE = re.compile(r"\|\s*fps\s*\|\s*(\d+)")


def timesteps_per_second(env_id: str, algo: str, n_timesteps: int, params: list[str] | None = None) -> float:
    """One zoo run of ``n_timesteps`` (seed 0, no evaluation) in a one-thread subprocess; its last logged fps."""
    with tempfile.TemporaryDirectory() as folder:
        logged_without_evaluation = ["--eval-freq", "-1", "--log-interval", "1", "--verbose", "1"]
        options = [*logged_without_evaluation, *hyperparameters_option(env_id, algo, Path(folder))]
        command = zoo_train_command(env_id, algo, n_timesteps, 0, Path(folder), options, params if algo == "acktr" else None)
        environment = one_thread_environment()
        output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment, cwd=ROOT).stdout
    speeds = FPS_LINE.findall(output)
    if not speeds:
        raise RuntimeError(f"{algo} on {env_id} logged no fps: {output[-2000:]}")
    return float(speeds[-1])


def timesteps_to_threshold(env_id: str, acktr_runs: Path | None = None) -> dict[str, float | None]:
    """
    Each algorithm's mean timesteps to the threshold over the seeds that reached it in the benchmark (None: none did);
    ACKTR's from the runs in ``acktr_runs`` if given (other settings, ``sample_efficiency.py run --runs``).
    """
    table = json.loads((RESULTS / "sample_efficiency.json").read_text())["table"]
    steps = {row["algo"]: row["steps_mean"] for row in table if row["env"] == env_id}
    if acktr_runs is not None:
        reached = [run["steps_to_threshold"] for run in load_runs(env_id, "acktr", acktr_runs)]
        steps["acktr"] = mean_std([value for value in reached if value is not None])[0]
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=list(ALGOS), choices=ALGOS)
    parser.add_argument("--timesteps", type=int, default=40_000, help="timesteps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--params", nargs="+", help="KEY:VALUE overriding ACKTR's section (rl-zoo3's -params)")
    parser.add_argument("--acktr-runs", type=Path, help="ACKTR's timesteps to the threshold from these runs (with --params)")
    args = parser.parse_args()

    speeds: dict[str, list[float]] = {algo: [] for algo in args.algos}
    for _ in range(args.rounds):
        for algo in args.algos:
            speeds[algo].append(timesteps_per_second(args.env, algo, args.timesteps, args.params))
            print(f"{algo}: {speeds[algo][-1]:.0f} timesteps/s", flush=True)
    fps = {algo: statistics.median(values) for algo, values in speeds.items()}
    steps = timesteps_to_threshold(args.env, args.acktr_runs)
    seconds = {algo: (to_threshold / fps[algo] if (to_threshold := steps.get(algo)) else None) for algo in args.algos}

    print(f"{args.env}, threshold {TASKS[args.env]['threshold']}, {args.timesteps} timesteps per run, {args.rounds} rounds")
    print("| algorithm | timesteps/s | vs A2C | timesteps to threshold | training seconds to threshold | vs PPO |")
    print("|---|---|---|---|---|---|")
    for algo in args.algos:
        to_threshold, algo_seconds, ppo_seconds = steps.get(algo), seconds[algo], seconds.get("ppo")
        cells = [
            f"{fps[algo]:.0f}",
            f"{fps[algo] / fps['a2c']:.2f}" if "a2c" in fps else "-",
            f"{to_threshold:,.0f}" if to_threshold else "not reached",
            f"{algo_seconds:,.0f}" if algo_seconds else "-",
            f"{algo_seconds / ppo_seconds:.2f}" if algo_seconds and ppo_seconds else "-",
        ]
        print(f"| {algo} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
