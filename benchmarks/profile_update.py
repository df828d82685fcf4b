"""
Where one ACKTR update spends its time, for one case of ``train_cost.py`` (ACKTR settings overridable).

    python benchmarks/profile_update.py --case cnn-32x20-zoo                      # seconds per phase of train()
    python benchmarks/profile_update.py --case mlp-8x20 --ops                     # torch.profiler table of the ops
    python benchmarks/profile_update.py --case cnn-32x20-zoo --set stats_batch_size=64     # statistics on 64 examples
    python benchmarks/profile_update.py --case mlp-8x20 --syncs                   # host round-trips per train()
    python benchmarks/profile_update.py --case mlp-8x20 --op-counts               # torch operations per phase
    python benchmarks/profile_update.py --conv-factors                            # AcktrCNN's conv factors, two ways
    python benchmarks/profile_update.py --case mlp-1x2048-hopper-zoo --kl-forward # the KL from the actor, or actor and critic
    python benchmarks/profile_update.py --case mlp-16x20-acrobot-zoo --critic-step # the parts of one further critic step

Phases: the wall-clock time spent in each K-FAC method and in the policy's forward passes during ``--updates``
``train()`` calls on one collected rollout (nested phases are included in their parents: ``step`` contains the
inverse refresh, the preconditioning, the trust-region sums and the momentum step). ``--syncs`` counts the calls
that copy a tensor's value to Python (``item``, ``tolist``, ``float``, ``bool``, ``int``), A2C's alongside.
``--op-counts`` counts the torch operations that Python calls (``aten`` operations not called by another one), per
innermost phase, with A2C's total: where the fixed per-operation cost of a small network goes. ``--conv-factors``
times, for the convolutions of ``AcktrCNN`` on Atari frames, the activation factor built by batched products summed
over the batch against one product of the ``(D, B * T)`` patch matrix (what ``KroneckerBlock`` does).
``--kl-forward`` times ``train()`` (a case with ``target_kl`` or ``log_kl``) with the KL's forward pass through the
actor's layers alone (what ACKTR does) and through actor and critic, alternating the two ``--rounds`` times.
``--critic-step`` times the parts of one further critic step (``n_critic_updates``) on the rollout, median over
``--updates`` steps: the critic's forward and loss, its gradient, zeroing and assigning the gradients, ``KFAC.step``.
"""

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import torch as th
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_cost
from kfac_update_cost import median_seconds

import sb3_acktr.acktr.acktr as acktr_module
import sb3_acktr.kfac.optimizer as optimizer_module
from sb3_acktr.kfac.optimizer import KFAC

PHASES: list[tuple[Any, str, str]] = [
    (acktr_module, "forward_actor_critic", "forward passes (with statistics capture)"),
    (acktr_module, "action_distribution", "KL forward (the actor's layers)"),
    (acktr_module, "fisher_loss", "Fisher loss (sampling)"),
    (KFAC, "update_statistics", "Fisher backward and factors' averages"),
    (th.Tensor, "backward", "loss backward"),
    (KFAC, "step", "step"),
    (KFAC, "_refresh_inverses", "step: inverse refresh"),
    (KFAC, "_natural_gradients", "step: preconditioning"),
    (optimizer_module, "trust_region_sums", "step: trust-region sums"),
    (KFAC, "_momentum_step", "step: momentum"),
]
SYNC_METHODS = ("item", "tolist", "__float__", "__bool__", "__int__")


def model_with_rollout(algo: str, case_name: str, overrides: dict[str, Any]) -> Any:
    case = dict(train_cost.CASES[case_name])
    case["acktr"] = dict(case.get("acktr", {}), **overrides)
    model = train_cost.make_model(algo, case, train_cost.make_env(case))
    callback = train_cost._Noop()
    callback.init_callback(model)
    model._setup_learn(case["n_envs"] * case["n_steps"], callback)
    assert model.env is not None
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=case["n_steps"])
    model._current_progress_remaining = 1.0
    for _ in range(3):  # first inverses and allocations
        model.train()
    return model


@contextmanager
def wrapped(methods: list[tuple[Any, str, str]], around: Callable[[str], AbstractContextManager[Any]]) -> Iterator[None]:
    """Inside this context, every call of ``owner.name`` runs inside ``around(label)``, for each ``(owner, name, label)``."""
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in methods]
    for (owner, name, original), (_, _, label) in zip(originals, methods, strict=True):
        setattr(owner, name, _run_inside(original, label, around))
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def _run_inside(original: Callable[..., Any], label: str, around: Callable[[str], AbstractContextManager[Any]]) -> Any:
    @functools.wraps(original)
    def method(*args: Any, **kwargs: Any) -> Any:
        with around(label):
            return original(*args, **kwargs)

    return method


def phases(model: Any, n_updates: int) -> None:
    seconds: dict[str, float] = dict.fromkeys((label for _, _, label in PHASES), 0.0)

    @contextmanager
    def timed(label: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds[label] += time.perf_counter() - start

    with wrapped(PHASES, timed):
        start = time.perf_counter()
        for _ in range(n_updates):
            model.train()
        total = time.perf_counter() - start
    print(f"train(): {1000 * total / n_updates:.2f} ms per update")
    for _, _, label in PHASES:
        print(f"  {label}: {1000 * seconds[label] / n_updates:.2f} ms")


def top_level_operations(model: Any, n_updates: int, phases: list[tuple[Any, str, str]]) -> dict[str, float]:
    """Per ``train()``: the ``aten`` operations not called by another one, by innermost phase (``other`` outside)."""
    with (
        wrapped(phases, lambda label: record_function(f"phase: {label}")),
        profile(activities=[ProfilerActivity.CPU]) as profiler,
    ):
        for _ in range(n_updates):
            model.train()
    counts: dict[str, float] = {}
    for event in profiler.events():
        if not event.name.startswith("aten::"):
            continue
        label, parent, nested = "other", event.cpu_parent, False
        while parent is not None:
            nested = nested or parent.name.startswith("aten::")
            if label == "other" and parent.name.startswith("phase: "):
                label = parent.name.removeprefix("phase: ")
            parent = parent.cpu_parent
        if not nested:
            counts[label] = counts.get(label, 0.0) + 1 / n_updates
    return counts


def operations(model: Any, n_updates: int) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(n_updates):
            model.train()
    print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def syncs(model: Any, n_updates: int) -> int:
    """Calls per ``train()`` that copy a tensor's value to Python."""
    count = 0

    @contextmanager
    def counted(_: str) -> Iterator[None]:
        nonlocal count
        count += 1
        yield

    with wrapped([(th.Tensor, name, name) for name in SYNC_METHODS], counted):
        for _ in range(n_updates):
            model.train()
    return round(count / n_updates)


def kl_forward(model: Any, n_updates: int, rounds: int) -> None:
    """
    Mean ms per ``train()`` (median over the rounds) with the KL from the actor's layers alone and from the forward pass
    of actor and critic.
    """
    actor_alone = acktr_module.action_distribution
    ways = {
        "actor alone": actor_alone,
        "actor and critic": lambda policy, obs: acktr_module.forward_actor_critic(policy, obs)[0],
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for _ in range(rounds):
            for name, way in ways.items():
                acktr_module.action_distribution = way
                times[name].append(train_cost.seconds_per_update(model, n_updates))
    finally:
        acktr_module.action_distribution = actor_alone
    for name, seconds in times.items():
        print(f"KL forward through the {name}: {1000 * statistics.median(seconds):.1f} ms per train()")


def critic_step(model: Any, n_steps: int) -> None:
    """Median ms of the parts of a further critic step, as ``ACKTR._fit_critic`` takes it, over ``n_steps`` steps."""
    data = next(model.rollout_buffer.get(batch_size=None))
    kfac = model.kfac
    critic_params = next(group["params"] for group in kfac.param_groups if group["name"] == acktr_module.VALUE_REGION)
    parts: dict[str, list[float]] = {name: [] for name in ("forward and loss", "gradient", "zero and assign", "step")}
    for _ in range(n_steps):
        times = [time.perf_counter()]
        value_loss = F.mse_loss(data.returns, model.policy.predict_values(data.observations).flatten())
        times.append(time.perf_counter())
        grads = th.autograd.grad(model.vf_coef * value_loss, critic_params, allow_unused=True)
        times.append(time.perf_counter())
        kfac.zero_grad()
        for param, grad in zip(critic_params, grads, strict=True):
            param.grad = grad
        times.append(time.perf_counter())
        kfac.step(further=True)
        times.append(time.perf_counter())
        for name, start, end in zip(parts, times, times[1:], strict=False):
            parts[name].append(end - start)
    medians = {name: 1000 * statistics.median(seconds) for name, seconds in parts.items()}
    print(", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items()) + f"; in all {sum(medians.values()):.2f} ms")


def _median_ms(function: Callable[[], Any], rounds: int) -> float:
    return 1000 * median_seconds(function, rounds, warmup=1)


def _batched_products(patches: th.Tensor) -> th.Tensor:
    return th.bmm(patches, patches.transpose(1, 2)).sum(dim=0)


def _one_product(patches: th.Tensor) -> th.Tensor:
    columns = patches.transpose(0, 1).reshape(patches.shape[1], -1)
    return columns @ columns.T


def conv_factors(batch_sizes: list[int], rounds: int) -> None:
    """Median ms of the two ways to build the activation factors of AcktrCNN's convolutions on Atari frames."""
    layers = [("conv1", (4, 84, 84), 8, 4), ("conv2", (32, 20, 20), 4, 2), ("conv3", (64, 9, 9), 3, 1)]
    print("| batch | layer | D | T | unfold ms | batched products, summed ms | one product of (D, B*T) ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for batch_size in batch_sizes:
        for name, shape, kernel, stride in layers:
            inputs = th.relu(th.randn(batch_size, *shape))
            unfold = functools.partial(F.unfold, inputs, kernel, 1, 0, stride)
            patches = unfold()
            _, dim, locations = patches.shape
            batched = _median_ms(functools.partial(_batched_products, patches), rounds)
            single = _median_ms(functools.partial(_one_product, patches), rounds)
            print(
                f"| {batch_size} | {name} | {dim} | {locations} | {_median_ms(unfold, rounds):.1f} | {batched:.1f} | "
                f"{single:.1f} | {batched / single:.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="cnn-32x20-zoo", choices=list(train_cost.CASES))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ACKTR arguments (Python literals)")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--ops", action="store_true", help="torch.profiler table instead of the phases")
    parser.add_argument("--syncs", action="store_true", help="host round-trips per train(), ACKTR and A2C")
    parser.add_argument("--op-counts", action="store_true", help="torch operations per phase, ACKTR and A2C")
    parser.add_argument("--conv-factors", action="store_true", help="time the conv activation factors, two ways")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[640, 64])
    parser.add_argument("--kl-forward", action="store_true", help="train() with the KL from the actor, or actor and critic")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of --kl-forward")
    parser.add_argument("--critic-step", action="store_true", help="the parts of one further critic step")
    args = parser.parse_args()
    print(f"torch {th.__version__}, {th.get_num_threads()} threads")
    if args.conv_factors:
        conv_factors(args.batch_sizes, rounds=5)
        return
    overrides = {key: eval(value) for key, value in (item.split("=", 1) for item in args.set)}
    model = model_with_rollout("acktr", args.case, overrides)
    print(f"case {args.case}, ACKTR overrides {overrides}, {args.updates} updates")
    if args.syncs:
        a2c = model_with_rollout("a2c", args.case, {})
        print(f"host round-trips per train(): ACKTR {syncs(model, args.updates)}, A2C {syncs(a2c, args.updates)}")
    elif args.critic_step:
        critic_step(model, args.updates)
    elif args.kl_forward:
        kl_forward(model, args.updates, args.rounds)
    elif args.op_counts:
        counts = top_level_operations(model, args.updates, PHASES)
        for label, count in sorted(counts.items(), key=lambda item: -item[1]):
            print(f"  {label}: {count:.0f}")
        a2c_counts = top_level_operations(model_with_rollout("a2c", args.case, {}), args.updates, [])
        print(f"operations per train(): ACKTR {sum(counts.values()):.0f}, A2C {sum(a2c_counts.values()):.0f}")
    elif args.ops:
        operations(model, args.updates)
    else:
        phases(model, args.updates)


if __name__ == "__main__":
    main()
