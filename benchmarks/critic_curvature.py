"""
How far K-FAC's curvature for ACKTR's critic is from the exact Fisher, and which approximation costs what.

Before chosen updates, for the gradient of ``vf_coef * value_loss`` over the critic's own layers (an ``MlpPolicy``,
whose critic has its own network), the script prints ``sum <V, grad>`` (the quantity ACKTR's trust region bounds) with
``V`` the gradient preconditioned by, from exact to what the step uses:

1. ``exact``: the exact Fisher of the batch over all those layers. It is at most the bound
   ``(vf_coef / vf_fisher_coef)^2 * value_loss``, and equal to it when the residuals lie in the range of the critic's
   Jacobian (up to the directions that ``RANGE_CUTOFF`` drops);
2. ``block``: its block diagonal, one block per layer (the structure K-FAC keeps): at most one bound per layer;
3. ``kron``: Kronecker factors of this batch, with the expected (not sampled) output gradients;
4. ``running``: the running averages of the factors that the optimizer keeps (sampled, decayed by ``stats_decay``,
   without this batch yet);
5. ``previous``: the inverses of the previous update, which the step uses unless it refreshes them first (rows
   marked ``*``: it then inverts the running averages with this batch folded in).

``exact`` and ``block`` are given without damping; ``-damped`` and all K-FAC rows use the model's Tikhonov damping
(``kron`` compares with ``block-damped``). Each figure is also given as a multiple of the bound. The model runs on CPU.

    python benchmarks/critic_curvature.py --env Acrobot-v1 --updates 20 60 120
    python benchmarks/critic_curvature.py --env CartPole-v1 --kwargs "dict(kl_clip=0.003, vf_kl_clip=None)"
"""

import argparse
from typing import Any

import torch as th
from first_reach import TASKS, make_envs
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from sb3_acktr import ACKTR
from sb3_acktr.kfac.inverses import compute_inverse

# Eigenvalues of the Jacobian kernel below this fraction of the largest count as outside its range: the Jacobians come
# from float32 forward passes, and the spectrum tails off smoothly, so ``exact`` depends (a little) on the choice.
RANGE_CUTOFF = 1e-10

COLUMNS = ("exact", "exact-damped", "block", "block-damped", "kron", "running", "previous")


def _kernel_inner(weights: th.Tensor, kernel: th.Tensor, scale: float, damping: float) -> float:
    """
    ``g^T (scale / N * J^T J + damping I)^-1 g`` for ``g = J^T weights``, from the ``N x N`` kernel ``J J^T`` (push-through
    identity); without damping, with the pseudo-inverse: ``N / scale * |projection of weights on range(J)|^2``.

    :param weights: per-example weights ``w`` of the gradient, shape ``(N,)``
    :param kernel: ``J J^T``, shape ``(N, N)``
    :param scale: Fisher scale ``s`` in ``s / N * J^T J``
    :param damping: Tikhonov damping (0: none)
    :return: the inner product
    """
    n = kernel.shape[0]
    if damping == 0:
        eigenvalues, eigenvectors = th.linalg.eigh(kernel)
        if eigenvalues.max() <= 0:
            return 0.0
        in_range = eigenvectors[:, eigenvalues > eigenvalues.max() * RANGE_CUTOFF]
        return float(n / scale * (in_range.T @ weights).square().sum())
    identity = th.eye(n, dtype=kernel.dtype, device=kernel.device)
    return float(weights @ kernel @ th.linalg.solve(scale / n * kernel + damping * identity, weights))


class CriticCurvatureProbe(BaseCallback):
    """Print the comparison on the fresh rollout, before the updates listed (1-based)."""

    def __init__(self, updates: list[int]) -> None:
        """:param updates: the (1-based) updates before which to compare, each at least 2 (statistics exist)"""
        super().__init__()
        self.updates = set(updates)
        self.rows: list[dict[str, Any]] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        model = self.model
        assert isinstance(model, ACKTR)
        update = model._n_updates + 1
        if update in self.updates:
            row = dict(update=update, **compare(model))
            self.rows.append(row)
            print(format_row(row), flush=True)


def critic_layers(model: ACKTR) -> list[nn.Linear]:
    """The critic's own linear layers: its MLP (``mlp_extractor.value_net``) and the value head."""
    policy = model.policy
    layers = [module for module in policy.mlp_extractor.value_net.modules() if isinstance(module, nn.Linear)]
    return [*layers, policy.value_net]


def compare(model: ACKTR) -> dict[str, Any]:
    """The row of figures for the rollout in ``model.rollout_buffer`` (see the module docstring)."""
    buffer = model.rollout_buffer
    observations = th.as_tensor(buffer.observations.reshape(-1, *buffer.obs_shape))
    returns = th.as_tensor(buffer.returns.reshape(-1)).double()
    layers = critic_layers(model)
    inputs: dict[nn.Module, th.Tensor] = {}
    outputs: dict[nn.Module, th.Tensor] = {}

    def record(module: nn.Module, args: tuple[th.Tensor, ...], output: th.Tensor) -> None:
        inputs[module], outputs[module] = args[0], output

    handles = [layer.register_forward_hook(record) for layer in layers]
    try:
        values = model.policy.predict_values(observations).flatten()
    finally:
        for handle in handles:
            handle.remove()
    output_grads = th.autograd.grad(values.sum(), [outputs[layer] for layer in layers], retain_graph=True)
    n = values.shape[0]
    vf_coef, fisher_coef, damping = model.vf_coef, model.vf_fisher_coef, model.damping
    residuals = returns - values.detach().double()
    value_loss = residuals.square().mean()
    # grad of vf_coef * mean (R - V)^2 is J^T weights; the critic's Fisher term gives (2 fisher_coef)^2 J^T J / N.
    weights = -2 * vf_coef / n * residuals
    scale = 4 * fisher_coef**2
    ones = th.ones(n, 1, dtype=th.float64)
    activations = [th.cat([inputs[layer].detach().double(), ones], dim=1) for layer in layers]
    jacobians = [grad.double() for grad in output_grads]
    kernels = [(jac @ jac.T) * (act @ act.T) for jac, act in zip(jacobians, activations, strict=True)]
    totals = dict.fromkeys(("block", "block-damped", "kron", "running"), 0.0)
    blocks = {block.module: block for block in model.kfac.blocks}
    for layer, jac, act, kernel in zip(layers, jacobians, activations, kernels, strict=True):
        totals["block"] += _kernel_inner(weights, kernel, scale, 0.0)
        totals["block-damped"] += _kernel_inner(weights, kernel, scale, damping)
        grad = jac.T @ (weights[:, None] * act)
        block = blocks[layer]
        assert block.bias is not None, "the homogeneous coordinate above assumes biased layers"
        # The optimizer's own factor code, on this batch and with the expected output gradients.
        fresh_a = block.activation_factor(inputs[layer].detach().double())
        fresh_g = scale * block.gradient_factor(jac)
        factors = model.kfac.factors(block)
        assert factors is not None, "probe after the first statistics update"
        for key, (a_factor, g_factor) in (("kron", (fresh_a, fresh_g)), ("running", factors)):
            inverse, _ = compute_inverse(a_factor.double(), g_factor.double(), model.damping_mode, damping)
            totals[key] += float((inverse.precondition(grad) * grad).sum())
    total_kernel = sum(kernels[1:], kernels[0])
    kfac = model.kfac
    return {
        "bound": float((vf_coef / fisher_coef) ** 2 * value_loss),
        "exact": _kernel_inner(weights, total_kernel, scale, 0.0),
        "exact-damped": _kernel_inner(weights, total_kernel, scale, damping),
        **totals,
        "previous": kfac.natural_gradient_inner(vf_coef * th.nn.functional.mse_loss(returns.float(), values)),
        "step_refreshes": kfac.inverse_age >= kfac.inverse_update_interval,
    }


def format_row(row: dict[str, Any]) -> str:
    """One markdown table row: each figure and its multiple of the bound."""
    cells = [f"{row[key]:.3g} ({row[key] / row['bound']:.1f}x)" for key in COLUMNS]
    update = f"{row['update']}{'*' if row['step_refreshes'] else ''}"
    return f"| {update} | {row['bound']:.3g} | " + " | ".join(cells) + " |"


def probe(env_id: str, kwargs: dict[str, Any], updates: list[int], seed: int = 0) -> list[dict[str, Any]]:
    """Train ACKTR on ``env_id`` up to the last of ``updates``, comparing before each of them; return the rows."""
    if min(updates) < 2:
        raise ValueError(f"compare before update 2 or later (the factors exist after the first), got {min(updates)}")
    env, _ = make_envs(env_id, seed)
    # Statistics at every update: the probe compares the factors update by update.
    model = ACKTR("MlpPolicy", env, seed=seed, device="cpu", **{"ent_coef": 0.0, "stats_update_interval": 1, **kwargs})
    if model.vf_fisher_coef <= 0:
        raise ValueError("the bound needs vf_fisher_coef > 0")
    extractors = (model.policy.pi_features_extractor, model.policy.vf_features_extractor)
    if any(param.numel() for extractor in extractors for param in extractor.parameters()):
        raise ValueError("the probe covers the critic's own layers: use a features extractor without parameters")
    callback = CriticCurvatureProbe(updates)
    model.learn(max(updates) * model.n_steps * model.n_envs, callback=callback)
    return callback.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Acrobot-v1", choices=list(TASKS))
    parser.add_argument("--kwargs", default="dict()", help="ACKTR constructor arguments, as a Python dict expression")
    parser.add_argument("--updates", nargs="+", type=int, default=[20, 60, 120])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)
    print(f"{args.env}, seed {args.seed}, {args.kwargs}: sum <V, grad> of vf_coef * value_loss (multiple of the bound)")
    print("(*: that update's step refreshes its inverses before using them)")
    print("| update | bound | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    probe(args.env, eval(args.kwargs), args.updates, args.seed)


if __name__ == "__main__":
    main()
