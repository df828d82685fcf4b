"""
Cost of one K-FAC update against one plain gradient step (A2C's RMSprop) of the same SB3 policy on the same batch.

For each model, batch size, damping mode and conv mode it times (median over repeats):

* ``plain``: forward, A2C loss, backward, RMSprop step;
* ``kfac``: forward with statistics capture, Fisher pass, backward, K-FAC step (no inverse refresh);
* ``no-stats``: the same without capture and Fisher pass (the updates between statistics updates);
* ``inverse``: one refresh of every inverse,

and prints the amortised ratio to ``plain`` for several statistics and inverse refresh intervals, and the
wall time of a run of updates with synchronous against background inverse refreshes.

    python benchmarks/kfac_update_cost.py            # everything (a few minutes on 2 cores)
    python benchmarks/kfac_update_cost.py --quick    # MLP and NatureCNN at batch 320 only
    python benchmarks/kfac_update_cost.py --models acktr-cnn --no-async   # the paper's smaller Atari network
"""

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, NatureCNN

from sb3_acktr import KFAC, AcktrCNN
from sb3_acktr.acktr.acktr import fisher_loss


def median_seconds(function: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def make_policy(kind: str, seed: int = 0) -> tuple[ActorCriticPolicy, spaces.Space]:
    th.manual_seed(seed)
    if kind in ("cnn", "acktr-cnn"):
        observation_space: spaces.Space = spaces.Box(0, 255, (4, 84, 84), np.uint8)
        extractor: type[BaseFeaturesExtractor] = AcktrCNN if kind == "acktr-cnn" else NatureCNN
        policy: ActorCriticPolicy = ActorCriticCnnPolicy(
            observation_space, spaces.Discrete(6), lambda _: 7e-4, features_extractor_class=extractor
        )
    else:
        observation_space = spaces.Box(-1, 1, (8,), np.float32)
        policy = ActorCriticPolicy(observation_space, spaces.Discrete(4), lambda _: 7e-4, net_arch=[64, 64])
    return policy, observation_space


def make_batch(observation_space: spaces.Space, batch_size: int) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
    observations = th.as_tensor(np.stack([observation_space.sample() for _ in range(batch_size)]))
    assert observation_space.shape is not None
    n_actions = 6 if len(observation_space.shape) == 3 else 4
    return (
        observations,
        th.randint(0, n_actions, (batch_size,)),
        th.randn(batch_size),  # advantages
        th.randn(batch_size),  # returns
    )


def forward(policy: ActorCriticPolicy, observations: th.Tensor):
    features = policy.extract_features(preprocess_obs(observations, policy.observation_space))
    latent_pi, latent_vf = policy.mlp_extractor(features)
    return policy._get_action_dist_from_latent(latent_pi), policy.value_net(latent_vf).flatten()


def a2c_loss(distribution, values: th.Tensor, batch: tuple[th.Tensor, ...]) -> th.Tensor:
    _, actions, advantages, returns = batch
    return (
        -(advantages * distribution.log_prob(actions)).mean()
        + 0.5 * th.nn.functional.mse_loss(returns, values)
        - 0.01 * distribution.entropy().mean()
    )


def plain_step(policy: ActorCriticPolicy, optimizer: th.optim.Optimizer, batch: tuple[th.Tensor, ...]) -> None:
    distribution, values = forward(policy, batch[0])
    loss = a2c_loss(distribution, values, batch)
    optimizer.zero_grad()
    loss.backward()
    th.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
    optimizer.step()


def kfac_step(policy: ActorCriticPolicy, optimizer: KFAC, batch: tuple[th.Tensor, ...], statistics_update: bool) -> None:
    with optimizer.capture_statistics(enabled=statistics_update):
        distribution, values = forward(policy, batch[0])
    if statistics_update:
        optimizer.update_statistics(fisher_loss(distribution, values, vf_fisher_coef=1.0))
    loss = a2c_loss(distribution, values, batch)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def inverse_refresh_seconds(optimizer: KFAC, repeats: int) -> float:
    damping = optimizer.param_groups[0]["damping"]
    factors = {block: f for block in optimizer.blocks if (f := optimizer.factors(block)) is not None}
    return median_seconds(lambda: optimizer._compute_inverses(factors, damping), repeats, warmup=0)


def measure(kind: str, batch_size: int, damping_mode: str, conv_mode: str, repeats: int) -> dict[str, float]:
    policy, observation_space = make_policy(kind)
    batch = make_batch(observation_space, batch_size)
    rmsprop = th.optim.RMSprop(policy.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    plain = median_seconds(lambda: plain_step(policy, rmsprop, batch), repeats)

    policy, _ = make_policy(kind)
    optimizer = KFAC(policy, damping_mode=damping_mode, conv_mode=conv_mode, inverse_update_interval=10**9)  # type: ignore[arg-type]
    kfac = median_seconds(lambda: kfac_step(policy, optimizer, batch, True), repeats)
    no_stats = median_seconds(lambda: kfac_step(policy, optimizer, batch, False), repeats)
    inverse = inverse_refresh_seconds(optimizer, repeats=1 if kind == "cnn" else repeats)
    optimizer.remove_hooks()
    return dict(plain=plain, kfac=kfac, no_stats=no_stats, inverse=inverse)


def amortised_ratio(times: dict[str, float], stats_interval: int, inverse_interval: int) -> float:
    update = (times["kfac"] + (stats_interval - 1) * times["no_stats"]) / stats_interval
    return (update + times["inverse"] / inverse_interval) / times["plain"]


def async_comparison(kind: str, batch_size: int, damping_mode: str, n_updates: int, interval: int) -> tuple[float, float]:
    """Wall time of ``n_updates`` K-FAC updates with synchronous and with background inverse refreshes."""
    results = []
    for async_inverse in (False, True):
        policy, observation_space = make_policy(kind)
        batch = make_batch(observation_space, batch_size)
        optimizer = KFAC(policy, damping_mode=damping_mode, inverse_update_interval=interval, async_inverse=async_inverse)  # type: ignore[arg-type]
        kfac_step(policy, optimizer, batch, True)  # first inverses (always synchronous)
        start = time.perf_counter()
        for _ in range(n_updates):
            kfac_step(policy, optimizer, batch, True)
        results.append(time.perf_counter() - start)
        optimizer.remove_hooks()
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="MLP and NatureCNN at batch 320 only, exact damping")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=th.get_num_threads())
    parser.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn", "acktr-cnn"])
    parser.add_argument("--no-async", action="store_true", help="skip the background-thread comparison")
    args = parser.parse_args()
    th.set_num_threads(args.threads)

    batches = (320,) if args.quick else (320, 640)
    damping_modes = ("exact",) if args.quick else ("exact", "factored")
    cases = [("mlp", 160, d, "expand") for d in ("exact", "factored") if "mlp" in args.models]
    cases += [
        (m, b, d, c) for m in args.models if m != "mlp" for b in batches for d in damping_modes for c in ("expand", "reduce")
    ]
    intervals = [(1, 1), (1, 10), (1, 100), (2, 100), (4, 100)]

    print(f"torch {th.__version__}, {args.threads} threads, median of {args.repeats} repeats; times in ms")
    header = f"{'model':9} {'batch':>5} {'damping':8} {'conv':6} {'plain':>7} {'kfac':>7} {'no-stats':>8} {'inverse':>8}"
    header += "".join(f" {f'r(s{s},i{i})':>11}" for s, i in intervals)
    print(header)
    for kind, batch_size, damping_mode, conv_mode in cases:
        # An MLP update takes milliseconds: many more repeats make its median stable.
        times = measure(kind, batch_size, damping_mode, conv_mode, args.repeats * (20 if kind == "mlp" else 1))
        row = f"{kind:9} {batch_size:>5} {damping_mode:8} {conv_mode:6}"
        row += "".join(f" {1000 * times[k]:>{w}.1f}" for k, w in (("plain", 7), ("kfac", 7), ("no_stats", 8), ("inverse", 8)))
        row += "".join(f" {amortised_ratio(times, s, i):>11.2f}" for s, i in intervals)
        print(row, flush=True)
    print("r(sS,iI): amortised K-FAC update time / plain step time, statistics every S and inverses every I updates")

    if args.no_async:
        return
    n_updates, interval = (30, 10) if args.quick else (60, 10)
    for kind, damping_mode in (("cnn", "exact"), ("cnn", "factored")):
        sync_seconds, async_seconds = async_comparison(kind, 320, damping_mode, n_updates, interval)
        print(
            f"{n_updates} {kind} updates at batch 320, {damping_mode}, inverses every {interval}: "
            f"synchronous {sync_seconds:.1f} s, background thread {async_seconds:.1f} s "
            f"(ratio {async_seconds / sync_seconds:.2f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
