"""
How far curvature statistics on a subset of the rollout (``stats_batch_size``) or on a sample of the convolutions'
patches (``patches_per_feature``) move the Kronecker factors from those of the whole rollout, one batch at a time and
once averaged over batches.

    python benchmarks/subset_statistics.py                 # the zoo's Atari settings, Pong frames, 32 envs x 20, 64 examples
    python benchmarks/subset_statistics.py --env BreakoutNoFrameskip-v4 --subset 160 --updates 200 --report-at 50 200
    python benchmarks/subset_statistics.py --env BreakoutNoFrameskip-v4 --subset 0 --patches-per-feature 8

ACKTR trains with the settings of a ``train_cost.py`` case, its statistics at every update on the whole rollout and
every patch. Before each update a second K-FAC optimizer on the same policy folds the factors of ``--subset`` random
examples (0: all) of the same rollout, with the conv input factors from ``--patches-per-feature`` patches per feature
(default: all), into running averages of its own (the same decay). At the ``--report-at`` updates, for each layer: the
relative Frobenius distance between the two averaged factors (what the step uses) and between the factors of this one
batch alone on the subset and on the whole rollout (what the averages absorb), and the ratio of ``<V, grad>`` (what the
trust region bounds) of the layer's last gradient, preconditioned with fresh inverses of the subset's averages and of
the whole rollout's: above 1, the subset's curvature is smaller in the gradient's directions and the trust region binds
harder.
The output of a run is in ``benchmarks/results/subset_statistics.txt``.
"""

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import PyTorchObs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_cost

from sb3_acktr import ACKTR
from sb3_acktr.acktr.acktr import fisher_loss, forward_actor_critic, select_observations, statistics_subset
from sb3_acktr.kfac import KFAC, KroneckerBlock, compute_inverse


def relative_distance(estimate: th.Tensor, reference: th.Tensor) -> float:
    return float(th.linalg.matrix_norm(estimate - reference) / th.linalg.matrix_norm(reference))


def natural_gradient_inner(block: KroneckerBlock, factors: tuple[th.Tensor, th.Tensor], damping: float) -> float:
    """``<V, grad>`` of the block's last gradient, preconditioned by fresh exact inverses of ``factors``."""
    grad = block.gradient_matrix()
    assert grad is not None
    inverse, _ = compute_inverse(*factors, "exact", damping)
    return float((inverse.precondition(grad) * grad).sum())


class SubsetStatistics(BaseCallback):
    """Before each update, the rollout's factors on a random subset, averaged by an optimizer of its own."""

    def __init__(self, subset_size: int | None, patches_per_feature: int | None, report_at: list[int]) -> None:
        super().__init__()
        self.subset_size = subset_size
        self.patches_per_feature = patches_per_feature
        self.report_at = set(report_at)
        self.rows: list[dict[str, Any]] = []

    def _on_training_start(self) -> None:
        assert isinstance(self.model, ACKTR)
        self.averaged = self._optimizer(self.model.stats_decay, self.patches_per_feature)

    def _optimizer(self, stats_decay: float, patches_per_feature: int | None) -> KFAC:
        model = self.model
        assert isinstance(model, ACKTR)
        return KFAC(
            model.policy,
            stats_decay=stats_decay,
            damping_mode=model.damping_mode,
            conv_mode=model.conv_mode,
            patches_per_feature=patches_per_feature,
        )

    def _statistics(self, optimizer: KFAC, observations: PyTorchObs, indices: th.Tensor | None) -> None:
        model = self.model
        assert isinstance(model, ACKTR)
        if indices is not None:
            observations = select_observations(observations, indices)
        with optimizer.capture_statistics():
            distribution, values = forward_actor_critic(model.policy, observations)
        optimizer.update_statistics(fisher_loss(distribution, values, model.vf_fisher_coef))

    def _on_rollout_end(self) -> None:
        model = self.model
        assert isinstance(model, ACKTR)
        batch_size = model.n_steps * model.n_envs
        update = model._n_updates + 1
        buffer = model.rollout_buffer
        observations = model.policy.obs_to_tensor(buffer.swap_and_flatten(buffer.observations))[0]
        if update in self.report_at:
            # Both averages hold the batches of the updates before this one; then this batch alone (decay 0).
            averaged = [
                (model.kfac.factors(mine), self.averaged.factors(theirs)) for mine, theirs in self._pairs(self.averaged)
            ]
            one_subset, one_whole = self._optimizer(0.0, self.patches_per_feature), self._optimizer(0.0, None)
            self._statistics(one_subset, observations, statistics_subset(batch_size, self.subset_size, model.device))
            self._statistics(one_whole, observations, None)
            for (block, _), (whole, subset), (_, batch_whole), (_, batch_subset) in zip(
                self._pairs(one_whole), averaged, self._factor_pairs(one_whole), self._factor_pairs(one_subset), strict=True
            ):
                if whole is None or subset is None or batch_whole is None or batch_subset is None:
                    continue
                self.rows.append(
                    dict(
                        update=update,
                        layer=block.name,
                        averaged_a=relative_distance(subset[0], whole[0]),
                        averaged_g=relative_distance(subset[1], whole[1]),
                        batch_a=relative_distance(batch_subset[0], batch_whole[0]),
                        batch_g=relative_distance(batch_subset[1], batch_whole[1]),
                        vg_ratio=natural_gradient_inner(block, subset, model.damping)
                        / natural_gradient_inner(block, whole, model.damping),
                    )
                )
            for optimizer in (one_subset, one_whole):
                optimizer.remove_hooks()
        self._statistics(self.averaged, observations, statistics_subset(batch_size, self.subset_size, model.device))

    def _pairs(self, optimizer: KFAC) -> list[tuple[KroneckerBlock, KroneckerBlock]]:
        """The training optimizer's blocks with the same layers' blocks of ``optimizer``."""
        model = self.model
        assert isinstance(model, ACKTR)
        return list(zip(model.kfac.blocks, optimizer.blocks, strict=True))

    def _factor_pairs(self, optimizer: KFAC) -> list[tuple[KroneckerBlock, tuple[th.Tensor, th.Tensor] | None]]:
        return [(block, optimizer.factors(block)) for block in optimizer.blocks]

    def _on_step(self) -> bool:
        return True


def run(
    case_name: str,
    subset_size: int | None,
    n_updates: int,
    report_at: list[int],
    env_id: str | None = None,
    patches_per_feature: int | None = None,
) -> SubsetStatistics:
    """Train with the statistics on the whole rollout, comparing them with those on subsets (see the module docstring)."""
    case = dict(train_cost.CASES[case_name], **({"env": env_id} if env_id else {}))
    case["acktr"] = dict(case.get("acktr", {}), stats_batch_size=None, patches_per_feature=None, stats_update_interval=1)
    model = train_cost.make_model("acktr", case, train_cost.make_env(case))
    callback = SubsetStatistics(subset_size, patches_per_feature, report_at)
    model.learn(n_updates * case["n_envs"] * case["n_steps"], callback=callback)
    return callback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="cnn-32x20-zoo", choices=list(train_cost.CASES))
    parser.add_argument("--env", help="another environment id than the case's (of the same kind)")
    parser.add_argument("--subset", type=int, default=64, help="examples (0: the whole rollout)")
    parser.add_argument("--patches-per-feature", type=int, help="patches drawn per input feature of each convolution")
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--report-at", nargs="+", type=int, default=[10, 25, 50, 100])
    args = parser.parse_args()
    subset = args.subset or None
    callback = run(args.case, subset, args.updates, args.report_at, args.env, args.patches_per_feature)
    case = dict(train_cost.CASES[args.case], **({"env": args.env} if args.env else {}))
    batch_size = case["n_envs"] * case["n_steps"]
    patches = f"{args.patches_per_feature} patches per feature" if args.patches_per_feature else "every patch"
    print(
        f"{case['env']}, {batch_size} examples per rollout, statistics on {subset or batch_size}, conv input factors from "
        f"{patches}; relative Frobenius distances"
    )
    print("| update | layer | averaged A | averaged G | one batch A | one batch G | <V, grad> subset / whole |")
    print("|---|---|---|---|---|---|---|")
    for row in callback.rows:
        print(
            f"| {row['update']} | {row['layer']} | {row['averaged_a']:.3f} | {row['averaged_g']:.3f} | {row['batch_a']:.3f} | "
            f"{row['batch_g']:.3f} | {row['vg_ratio']:.2f} |"
        )
    for key in ("averaged_a", "averaged_g", "batch_a", "batch_g", "vg_ratio"):
        last = [row[key] for row in callback.rows if row["update"] == max(args.report_at)]
        if last:
            print(f"median over layers at update {max(args.report_at)}, {key}: {statistics.median(last):.3f}")


if __name__ == "__main__":
    main()
