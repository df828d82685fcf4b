"""
Cost of ACKTR against A2C in the same run on this machine: ``train()`` time per update on identical batches, and
whole-run timesteps per second and peak memory.

    python benchmarks/train_cost.py              # every case in CASES
    python benchmarks/train_cost.py --quick      # fewer updates
    python benchmarks/train_cost.py --cases cnn-32x20-zoo cnn-32x20-cheap   # ACKTR with the paper's Atari network

Per update: one rollout is collected once and copied into both models; each then runs ``train()`` on it
``--updates`` times (ACKTR's inverse refreshes included, so the figure is amortised), alternating the two algorithms
``--rounds`` times; the ratio of the medians is printed. Whole run: ``learn()`` for the same number of timesteps in a
fresh subprocess per algorithm, reporting timesteps per second and peak resident memory (``VmHWM``).
Both algorithms use their defaults except ``n_steps`` (A2C's RMSprop and NatureCNN, ACKTR's K-FAC and AcktrCNN); in
``cnn-32x20-whole-rollout`` ACKTR's statistics come from the whole rollout (not the default subset), in
``mlp-8x20-every-update`` at every update (not every 4, the default without convolutions), in ``cnn-32x20-every-patch``
ACKTR's convolution input factors come from every patch (no sampling) of the whole rollout, in ``cnn-32x20-naturecnn``
ACKTR uses NatureCNN too, in ``cnn-32x20-zoo`` the trust region and K-FAC settings of the zoo's Atari section, in
``cnn-32x20-zoo-64`` those with the statistics on 64 examples of the rollout, in ``mlp-8x10-zoo`` those of the
CartPole-v1 section (``mlp-8x20-zoo``: on rollouts of 20 steps, as before the section's 10), in
``mlp-16x20-acrobot-zoo`` those of the Acrobot-v1 section (with its critic steps), in ``mlp-8x128-lunarlander-zoo``,
``mlp-1x2048-halfcheetah-zoo`` and ``mlp-1x2048-hopper-zoo`` those of these tasks' sections (in the last two A2C runs on
ACKTR's 256-256 networks too: the same network), in ``cnn-32x20-cheap`` reduced conv factors, factored damping,
statistics every 4 updates and inverses every 100 (each timed over at least one inverse refresh interval);
``cnn-8x20`` is the unseen-task panel's Atari set-up (8 environments); ``dict-8x20`` is SB3's SimpleMultiObsEnv (a
64x64 image and a vector, ``MultiInputPolicy`` with NatureCNN), the unseen-task panel's task with images.
"""

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch as th
from stable_baselines3 import A2C
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_atari_env, make_vec_env
from stable_baselines3.common.envs import SimpleMultiObsEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.vec_env import VecEnv, VecFrameStack

from sb3_acktr import ACKTR
from sb3_acktr.zoo import hyperparameter_sections, preprocess_trust_region_schedules, section_policy_kwargs


def zoo_settings(name: str) -> dict:
    """ACKTR's network, trust regions, K-FAC settings and critic steps in a section of the packaged hyperparameter file."""
    section = hyperparameter_sections()[name]
    keys = (
        "damping_mode",
        "conv_mode",
        "patches_per_feature",
        "stats_batch_size",
        "stats_update_interval",
        "inverse_update_interval",
        "kl_clip",
        "vf_kl_clip",
        "n_critic_updates",
        "target_kl",
        "normalize_advantage",
        "momentum",
    )
    settings = preprocess_trust_region_schedules({key: section[key] for key in keys if key in section})
    if "policy_kwargs" in section:
        settings["policy_kwargs"] = section_policy_kwargs(section["policy_kwargs"])
    return settings


NATURE_CNN = dict(features_extractor_class=NatureCNN)

# The cheapest K-FAC settings measured with the paper's network: reduced conv factors and factored damping, statistics
# every 4 updates, inverses every 100 (on the whole rollout).
CHEAP_ATARI_SETTINGS: dict[str, Any] = dict(
    damping_mode="factored",
    conv_mode="reduce",
    stats_batch_size=None,
    stats_update_interval=4,
    inverse_update_interval=100,
    vf_kl_clip=None,
)


def pong_case(n_envs: int = 32, **acktr: Any) -> dict[str, Any]:
    """Pong frames, 20 steps per environment, ACKTR with ``acktr`` on top of its defaults."""
    return dict(env="PongNoFrameskip-v4", n_envs=n_envs, n_steps=20, policy="CnnPolicy", acktr=acktr)


def mlp_case(env: str, n_envs: int, n_steps: int, **acktr: Any) -> dict[str, Any]:
    """``env`` with SB3's MLP policy, ``n_envs`` x ``n_steps`` per rollout, ACKTR with ``acktr`` on top of its defaults."""
    return dict(env=env, n_envs=n_envs, n_steps=n_steps, policy="MlpPolicy", acktr=acktr)


def dict_images_case(**acktr: Any) -> dict[str, Any]:
    """SB3's SimpleMultiObsEnv (an image and a vector), 8 x 20 per rollout, ``MultiInputPolicy`` (NatureCNN on the image)."""
    return dict(env="SimpleMultiObsEnv", n_envs=8, n_steps=20, policy="MultiInputPolicy", acktr=acktr)


def same_network(case: dict[str, Any]) -> dict[str, Any]:
    """``case`` with A2C on ACKTR's network (its ``policy_kwargs``) instead of A2C's default one."""
    return dict(case, a2c=dict(policy_kwargs=case["acktr"]["policy_kwargs"]))


CASES: dict[str, dict[str, Any]] = {
    "cnn-8x20": pong_case(8),
    "cnn-16x20": pong_case(16),
    "cnn-32x20": pong_case(),
    "cnn-32x20-whole-rollout": pong_case(stats_batch_size=None),
    "mlp-8x20": mlp_case("CartPole-v1", 8, 20),
    "mlp-8x20-every-update": mlp_case("CartPole-v1", 8, 20, stats_update_interval=1),
    "mlp-8x20-zoo": mlp_case("CartPole-v1", 8, 20, **zoo_settings("CartPole-v1")),
    "mlp-8x10-zoo": mlp_case("CartPole-v1", 8, 10, **zoo_settings("CartPole-v1")),
    "mlp-16x20-acrobot-zoo": mlp_case("Acrobot-v1", 16, 20, **zoo_settings("Acrobot-v1")),
    "mlp-8x128-lunarlander-zoo": mlp_case("LunarLander-v3", 8, 128, **zoo_settings("LunarLander-v3")),
    "mlp-1x2048-halfcheetah-zoo": same_network(mlp_case("HalfCheetah-v5", 1, 2048, **zoo_settings("HalfCheetah-v5"))),
    "mlp-1x2048-hopper-zoo": same_network(mlp_case("Hopper-v5", 1, 2048, **zoo_settings("Hopper-v5"))),
    "cnn-32x20-naturecnn": pong_case(policy_kwargs=NATURE_CNN),
    "cnn-32x20-zoo": pong_case(**zoo_settings("atari")),
    "cnn-32x20-every-patch": pong_case(patches_per_feature=None, stats_batch_size=None),
    "cnn-32x20-zoo-64": pong_case(**dict(zoo_settings("atari"), stats_batch_size=64)),
    "cnn-32x20-cheap": pong_case(**CHEAP_ATARI_SETTINGS),
    "dict-8x20": dict_images_case(),
}


def make_env(case: dict) -> VecEnv:
    if case["policy"] == "CnnPolicy":
        import ale_py
        import gymnasium

        gymnasium.register_envs(ale_py)
        return VecFrameStack(make_atari_env(case["env"], n_envs=case["n_envs"], seed=0), n_stack=4)
    if case["env"] == "SimpleMultiObsEnv":
        return make_vec_env(lambda: SimpleMultiObsEnv(random_start=True), n_envs=case["n_envs"], seed=0)
    return make_vec_env(case["env"], n_envs=case["n_envs"], seed=0)


def make_model(algo: str, case: dict, env: VecEnv) -> OnPolicyAlgorithm:
    if algo == "acktr":
        model: OnPolicyAlgorithm = ACKTR(
            case["policy"], env, n_steps=case["n_steps"], seed=0, device="cpu", **copy.deepcopy(case.get("acktr", {}))
        )
    else:
        a2c_kwargs = copy.deepcopy(case.get("a2c", {}))  # A2C adds its optimizer to policy_kwargs
        model = A2C(case["policy"], env, n_steps=case["n_steps"], seed=0, device="cpu", **a2c_kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


class _Noop(BaseCallback):
    def _on_step(self) -> bool:
        return True


def seconds_per_update(model: OnPolicyAlgorithm, n_updates: int) -> float:
    start = time.perf_counter()
    for _ in range(n_updates):
        model.train()
    return (time.perf_counter() - start) / n_updates


def train_ratio(case: dict, n_updates: int, rounds: int) -> dict[str, float]:
    env = make_env(case)
    a2c, acktr = make_model("a2c", case, env), make_model("acktr", case, env)
    callback = _Noop()
    callback.init_callback(a2c)
    a2c._setup_learn(case["n_envs"] * case["n_steps"], callback)
    assert a2c.env is not None  # the wrapped env (images transposed), not ``env``
    a2c.collect_rollouts(a2c.env, callback, a2c.rollout_buffer, n_rollout_steps=case["n_steps"])
    acktr.rollout_buffer = copy.deepcopy(a2c.rollout_buffer)
    acktr._current_progress_remaining = a2c._current_progress_remaining = 1.0
    n_updates = max(n_updates, case.get("acktr", {}).get("inverse_update_interval", 0))
    times: dict[str, list[float]] = {"a2c": [], "acktr": []}
    for _ in range(rounds):
        times["a2c"].append(seconds_per_update(a2c, n_updates))
        times["acktr"].append(seconds_per_update(acktr, n_updates))
    a2c_time, acktr_time = statistics.median(times["a2c"]), statistics.median(times["acktr"])
    return dict(a2c_ms=1000 * a2c_time, acktr_ms=1000 * acktr_time, ratio=acktr_time / a2c_time)


def whole_run(algo: str, case_name: str, n_updates: int) -> dict[str, float]:
    """Run in a fresh process: learn() for n_updates rollouts; timesteps per second and peak memory."""
    case = CASES[case_name]
    env = make_env(case)
    model = make_model(algo, case, env)
    timesteps = n_updates * case["n_envs"] * case["n_steps"]
    start = time.perf_counter()
    model.learn(timesteps)
    seconds = time.perf_counter() - start
    return dict(fps=timesteps / seconds, peak_rss_mib=peak_resident_mib())


def whole_run_updates(case_name: str, n_updates: int) -> int:
    """
    Rollouts per whole run: ``n_updates`` on Atari frames; otherwise ten times as many and at least 50,000 timesteps
    (the timesteps per second of runs of a few seconds were unstable).
    """
    case = CASES[case_name]
    if case["policy"] == "CnnPolicy":
        return n_updates
    return max(10 * n_updates, 50_000 // (case["n_envs"] * case["n_steps"]))


def peak_resident_mib() -> float:
    """This process's peak resident memory. ``ru_maxrss`` would carry over the parent's peak across fork and exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def whole_run_in_subprocess(algo: str, case_name: str, n_updates: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--whole-run", algo, case_name, "--updates", str(n_updates)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--updates", type=int, default=None, help="train() calls per timing (default 20, quick 10)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--whole-run", nargs=2, metavar=("ALGO", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n_updates = args.updates or (10 if args.quick else 20)
    if args.whole_run:
        print(json.dumps(whole_run(args.whole_run[0], args.whole_run[1], n_updates)))
        return

    rounds = f"median of {args.rounds} rounds of {n_updates} (or of one inverse interval when longer)"
    print(f"torch {th.__version__}, {th.get_num_threads()} threads; per update: {rounds}")
    columns = ["case", "A2C train() ms", "ACKTR train() ms", "ratio", "A2C fps", "ACKTR fps", "fps ratio"]
    columns += ["A2C peak MiB", "ACKTR peak MiB"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case_name in args.cases:
        per_update = train_ratio(CASES[case_name], n_updates, args.rounds)
        run_updates = whole_run_updates(case_name, n_updates)
        a2c_run = whole_run_in_subprocess("a2c", case_name, run_updates)
        acktr_run = whole_run_in_subprocess("acktr", case_name, run_updates)
        print(
            f"| {case_name} | {per_update['a2c_ms']:.1f} | {per_update['acktr_ms']:.1f} | {per_update['ratio']:.2f} | "
            f"{a2c_run['fps']:.0f} | {acktr_run['fps']:.0f} | {acktr_run['fps'] / a2c_run['fps']:.2f} | "
            f"{a2c_run['peak_rss_mib']:.0f} | {acktr_run['peak_rss_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
