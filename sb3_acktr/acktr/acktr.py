import copy
import io
import math
import pathlib
import warnings
import zipfile
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Literal, TypeVar

import torch as th
import torch.distributed as dist
from gymnasium import spaces
from stable_baselines3.common.base_class import maybe_make_env
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import Distribution, kl_divergence
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.common.utils import explained_variance
from stable_baselines3.common.vec_env import VecEnv, VecNormalize, unwrap_vec_normalize
from torch import nn
from torch.distributions import Distribution as TorchDistribution
from torch.nn import functional as F

from sb3_acktr.acktr.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_acktr.acktr.resume import RolloutStart, all_finite, capture_random_state, restore_random_state
from sb3_acktr.common import distributed
from sb3_acktr.kfac import KFAC
from sb3_acktr.kfac.blocks import ConvMode
from sb3_acktr.kfac.inverses import DampingMode
from sb3_acktr.kfac.optimizer import all_reduce_mean, check_device, check_hyperparameters, check_integer, check_number

SelfACKTR = TypeVar("SelfACKTR", bound="ACKTR")

# Set while ACKTR.load runs: a zip saved without the K-FAC optimizer state then loads (with a warning).
_LOADING: ContextVar[bool] = ContextVar("_LOADING", default=False)

DEFAULT_VF_KL_CLIP = 0.001
DEFAULT_VF_COEF = 0.5
# The "auto" critic settings: actor and critic that share parameters (a features extractor with parameters, as
# CnnPolicy's) train in one trust region with a smaller value coefficient, as the zoo's Atari section (a region of the
# critic's own would bound its head alone, while its loss still moves the shared layers); separate networks give the
# critic a region of its own (DEFAULT_VF_KL_CLIP). See docs/misc/benchmarks.md, "Library defaults on unseen tasks".
AUTO_SHARED_VF_COEF = 0.25
# Name of the critic's own trust region (a param group of the optimizer).
VALUE_REGION = "value"
# CnnPolicy's network before it defaulted to the paper's (heads on the features): SB3's layers after any extractor.
FORMER_CNN_NET_ARCH: dict[str, list[int]] = dict(pi=[64, 64], vf=[64, 64])

# The paper's adaptive step (its continuous-control code): after an update whose KL exceeds twice ``target_kl`` the
# learning rate is divided by this factor, after one whose KL is under half of it multiplied by it.
STEP_SIZE_ADAPTATION = 1.5
# Bounds of the factor that the adaptive step applies to the learning rate (schedule).
STEP_SIZE_FACTOR_BOUNDS = (1e-3, 1e2)

# The "auto" statistics: a network with convolutions, whose statistics cost per example, takes them at every update
# from a random AUTO_STATS_FRACTION of the rollout, but from no fewer than AUTO_STATS_BATCH_SIZE_MIN examples (Breakout
# learned with 160 of 640 examples, not with 64); a network without, whose statistics cost per operation, takes them
# from the whole rollout every AUTO_STATS_UPDATE_INTERVAL updates (CartPole and Acrobot learned as well as with every
# update).
AUTO_STATS_FRACTION = 0.25
AUTO_STATS_BATCH_SIZE_MIN = 160
AUTO_STATS_UPDATE_INTERVAL = 4

# Updates skipped in a row for a non-finite gradient before training stops with an explanation.
MAX_CONSECUTIVE_SKIPPED_UPDATES = 10


# The policy method that ACKTR's training calls instead of evaluate_actions, when a policy defines it.
TRAINING_HOOK = "distribution_and_values"

SUPPORTED_ACTION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)
SUPPORTED_OBSERVATION_SPACES = (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary, spaces.Dict)


def fisher_loss(distribution: Distribution, values: th.Tensor, vf_fisher_coef: float) -> th.Tensor:
    """
    A loss whose gradient samples the joint Fisher of actor and critic: that of the negative log-likelihood, summed over
    the batch, of actions sampled from the current policy, plus ``vf_fisher_coef * sum (V(s) - y)^2`` with
    ``y ~ N(V(s), 1)`` (held constant). Only its gradient is used, so the critic term is written as the linear function
    of ``V`` with that gradient, ``-2 vf_fisher_coef sum eps V(s)`` with ``eps = y - V(s) ~ N(0, 1)``. The critic term
    is the reference implementations' (no 1/2), so that ``vf_fisher_coef`` means what it means there: its Fisher is
    ``4 * vf_fisher_coef^2`` times the Gauss-Newton matrix of a unit-variance Gaussian critic (0.5 is the unit-variance
    weight). Entropy is not part of it.
    """
    with _unvalidated(distribution):  # the actions are the distribution's own samples
        sampled_actions = distribution.get_actions(deterministic=False).detach()
        actor_nll = -distribution.log_prob(sampled_actions).sum()
    critic_term = th.vdot(values, th.randn_like(values).mul_(-2.0 * vf_fisher_coef))
    return actor_nll + critic_term


@contextmanager
def _unvalidated(distribution: Distribution) -> Iterator[None]:
    """Inside this context, the torch distributions of ``distribution`` do not check their arguments."""
    inner = getattr(distribution, "distribution", None)
    torch_distributions = [d for d in (inner if isinstance(inner, list) else [inner]) if isinstance(d, TorchDistribution)]
    validating = [d._validate_args for d in torch_distributions]
    for torch_distribution in torch_distributions:
        torch_distribution._validate_args = False
    try:
        yield
    finally:
        for torch_distribution, validate in zip(torch_distributions, validating, strict=True):
            torch_distribution._validate_args = validate


def forward_actor_critic(policy: ActorCriticPolicy, obs: PyTorchObs) -> tuple[Distribution, th.Tensor]:
    """
    One forward pass of actor and critic (each layer called once, as K-FAC requires): the action distribution (whose
    samples give the Fisher) and the values, flat. A policy may define it as ``distribution_and_values(obs)``, the hook
    that replaces ``evaluate_actions`` in ACKTR's training.
    """
    hook = getattr(policy, TRAINING_HOOK, None)
    if hook is not None:
        distribution, values = hook(obs)
        return distribution, values.flatten()
    return actor_critic_pass(policy, obs)


def actor_critic_pass(policy: ActorCriticPolicy, obs: PyTorchObs) -> tuple[Distribution, th.Tensor]:
    """What ``ActorCriticPolicy.evaluate_actions`` computes, with the distribution itself: (distribution, flat values)."""
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        pi_features, vf_features = features
        latent_pi = policy.mlp_extractor.forward_actor(pi_features)
        latent_vf = policy.mlp_extractor.forward_critic(vf_features)
    return policy._get_action_dist_from_latent(latent_pi), policy.value_net(latent_vf).flatten()


def action_distribution(policy: ActorCriticPolicy, obs: PyTorchObs) -> Distribution:
    """
    The action distribution alone (the actor's layers, not the critic's), as training sees it: through the policy's
    ``distribution_and_values`` hook when it defines one, otherwise SB3's ``get_distribution``.
    """
    if hasattr(policy, TRAINING_HOOK):
        return forward_actor_critic(policy, obs)[0]
    return policy.get_distribution(obs)


def critic_values(policy: ActorCriticPolicy, obs: PyTorchObs) -> th.Tensor:
    """
    The values alone, flat, as training sees them: through the policy's ``distribution_and_values`` hook when it defines
    one (which runs the actor too), otherwise SB3's ``predict_values`` (the critic's layers only).
    """
    if hasattr(policy, TRAINING_HOOK):
        return forward_actor_critic(policy, obs)[1]
    return policy.predict_values(obs).flatten()


def has_convolutions(policy: nn.Module) -> bool:
    """Whether a network has convolutions (what the ``"auto"`` statistics settings depend on)."""
    return any(isinstance(module, nn.Conv2d) for module in policy.modules())


def resolve_stats_batch_size(
    stats_batch_size: int | Literal["auto"] | None, batch_size: int, convolutional: bool, world_size: int = 1
) -> int | None:
    """
    The number of examples of a batch of ``batch_size`` that the statistics use, or None for the whole batch. ``"auto"``:
    a quarter of the batch, but at least 160 examples, for a network with convolutions; the whole batch otherwise (a
    subset's passes of their own cost more than they save on a network whose statistics cost per operation). With
    ``world_size`` ranks of ``batch_size`` examples each, ``"auto"`` applies to their joined batch and each rank takes an
    equal share of it (rounded up); an integer applies per rank.
    """
    if not isinstance(stats_batch_size, str):
        return stats_batch_size
    if not convolutional:
        return None
    joined = max(int(AUTO_STATS_FRACTION * batch_size * world_size), AUTO_STATS_BATCH_SIZE_MIN)
    return -(-joined // world_size)


def resolve_stats_update_interval(stats_update_interval: int | Literal["auto"], convolutional: bool) -> int:
    """The updates between statistics updates. ``"auto"``: every update for a network with convolutions, else every 4."""
    if not isinstance(stats_update_interval, str):
        return stats_update_interval
    if stats_update_interval != "auto":
        raise ValueError(f"stats_update_interval must be 'auto' or an integer of at least 1, got {stats_update_interval!r}")
    return 1 if convolutional else AUTO_STATS_UPDATE_INTERVAL


def statistics_subset(batch_size: int, stats_batch_size: int | None, device: th.device) -> th.Tensor | None:
    """
    Sorted indices of ``stats_batch_size`` of the ``batch_size`` examples, drawn without replacement, on which the
    curvature statistics are estimated, or None for the whole batch. Every example is equally likely, so the subset's
    mean outer products are unbiased estimates of the batch's.
    """
    if stats_batch_size is None or stats_batch_size >= batch_size:
        return None
    return th.randperm(batch_size, device=device)[:stats_batch_size].sort().values


def select_observations(obs: PyTorchObs, indices: th.Tensor) -> PyTorchObs:
    """The observations of the examples ``indices`` (of every key, for Dict observations)."""
    if isinstance(obs, dict):
        return {key: value[indices] for key, value in obs.items()}
    return obs[indices]


def critic_only_parameters(policy: ActorCriticPolicy, observation_space: spaces.Space) -> list[th.nn.Parameter]:
    """The trainable parameters that the values depend on and the action distribution does not (see ``parameter_roles``)."""
    return [param for param, (actor, critic) in parameter_roles(policy, observation_space).items() if critic and not actor]


def shares_parameters(policy: ActorCriticPolicy, observation_space: spaces.Space) -> bool:
    """Whether the action distribution and the values depend on a trainable parameter in common (see ``parameter_roles``)."""
    return any(actor and critic for actor, critic in parameter_roles(policy, observation_space).values())


def parameter_roles(policy: ActorCriticPolicy, observation_space: spaces.Space) -> dict[th.nn.Parameter, tuple[bool, bool]]:
    """
    For each trainable parameter, whether the action distribution and whether the values depend on it, found by autograd
    on one observation sampled from a copy of the space (the environment's own random stream is not touched). The probe
    runs in eval mode (no BatchNorm statistics) and leaves the policy's action distribution as it found it (no graph
    attached to it, so the policy can still be deep-copied).
    """
    space = copy.deepcopy(observation_space)
    space.seed(0)
    was_training, dist_state = policy.training, dict(vars(policy.action_dist))
    policy.set_training_mode(False)
    try:
        obs, _ = policy.obs_to_tensor(space.sample())
        distribution, values = forward_actor_critic(policy, obs)
        actor_output = distribution.log_prob(distribution.get_actions(deterministic=True)).sum()
        params = [param for param in policy.parameters() if param.requires_grad]
        actor = th.autograd.grad(actor_output, params, allow_unused=True, retain_graph=True)
        critic = th.autograd.grad(values.sum(), params, allow_unused=True)
    finally:
        policy.set_training_mode(was_training)
        vars(policy.action_dist).clear()
        vars(policy.action_dist).update(dist_state)
    return {param: (a is not None, c is not None) for param, a, c in zip(params, actor, critic, strict=True)}


def resolve_vf_coef(vf_coef: float | Literal["auto"], shared: bool) -> float:
    """The value coefficient. ``"auto"``: ``AUTO_SHARED_VF_COEF`` when actor and critic share parameters, else SB3's."""
    if vf_coef != "auto":
        return vf_coef
    return AUTO_SHARED_VF_COEF if shared else DEFAULT_VF_COEF


def resolve_vf_kl_clip(
    vf_kl_clip: float | Schedule | Literal["auto"] | None, shared: bool, n_critic_updates: int
) -> float | Schedule | None:
    """
    The critic's own trust-region bound. ``"auto"``: none (one region) when actor and critic share parameters and the
    critic takes no further steps, else ``DEFAULT_VF_KL_CLIP``.
    """
    if vf_kl_clip != "auto":
        return vf_kl_clip
    return None if shared and n_critic_updates == 1 else DEFAULT_VF_KL_CLIP


class ACKTR(OnPolicyAlgorithm):
    """
    Actor Critic using Kronecker-Factored Trust Region (ACKTR).

    Paper: https://arxiv.org/abs/1708.05144
    A2C's loss and rollouts, with the gradient step replaced by a K-FAC natural gradient (one Fisher for actor
    and critic together), a KL trust region and momentum SGD. Defaults follow OpenAI Baselines' ACKTR, except that a
    critic that shares no parameters with the actor gets a trust region of its own (``vf_kl_clip``), and one that
    shares them a smaller ``vf_coef``.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy, ...); ACKTR's ``CnnPolicy`` uses the
        paper's network, :class:`~sb3_acktr.AcktrCNN` (see :class:`sb3_acktr.acktr.policies.CnnPolicy`). Training
        calls the policy's ``distribution_and_values(obs)`` when it has one (a policy that overrides
        ``evaluate_actions`` must define it), otherwise the steps of SB3's ``evaluate_actions`` (``actor_critic_pass``)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (i.e. batch size is n_steps * n_env where n_env is number of environment copies running in parallel)
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator.
        Equivalent to classic advantage when set to 1.
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation. ``"auto"`` (default): 0.25 when actor and
        critic share parameters (a features extractor with parameters, as ``CnnPolicy``'s), 0.5 otherwise
    :param momentum: Momentum of the SGD step (the step size is ``learning_rate * (1 - momentum)``)
    :param kl_clip: Trust-region bound on ``lr^2 * sum <V, grad>`` (about twice the KL between the policies
        before and after an update, momentum aside). It can be a function of the current progress remaining (from 1
        to 0): while the region binds, it sets the step length (the learning rate does not), so decaying it anneals
        the steps
    :param vf_kl_clip: Trust-region bound of the parameters that only the critic uses (``value_net``, the critic's MLP
        and its own features extractor); ``kl_clip`` bounds the rest. A separate region keeps large value errors from
        taking the whole step away from the actor (the paper's continuous-control code gave the critic its own
        optimizer too). ``None``: one trust region for all parameters, as in the reference implementations for Atari.
        It can be a function of the current progress remaining (from 1 to 0). ``"auto"`` (default): ``None`` when actor
        and critic share parameters and ``n_critic_updates`` is 1 (the region of the critic's own would bound its head
        alone, while its loss still moves the shared layers), 0.001 otherwise
    :param damping: Tikhonov damping of the Kronecker-factored Fisher
    :param stats_decay: Decay per update of the running averages of the Kronecker factors: they span about
        ``1 / (1 - stats_decay)`` updates whatever ``stats_update_interval`` (statistics every k updates are folded in
        with ``stats_decay ** k``)
    :param vf_fisher_coef: Weight of the critic's term ``(V(s) - y)^2``, ``y ~ N(V(s), 1)``, in the Fisher loss
        (the reference implementations' convention). The critic's curvature grows with its square: it is
        ``4 * vf_fisher_coef^2`` times a unit-variance Gaussian critic's, so 1.0 weighs it 4x and 0.5 is the unit-variance
        weight
    :param n_critic_updates: K-FAC steps per update on the value loss for the parameters that only the critic uses
        (the paper's continuous-control code fitted its critic with 25 per batch; sb3-contrib's TRPO takes
        ``n_critic_updates`` Adam steps): the first is the update's joint step, each further one a critic forward and
        backward pass preconditioned by the same factors and bounded by ``vf_kl_clip``, which must then not be
        ``None`` (``"auto"`` then gives 0.001)
    :param damping_mode: ``"exact"`` (eigendecompositions, damping added to eigenvalue products) or
        ``"factored"`` (pi-adjusted Tikhonov damping, Cholesky inverses)
    :param conv_mode: ``"expand"`` (KFC) or ``"reduce"`` statistics for convolutions
    :param patches_per_feature: In expand mode, estimate each convolution's input factor ``A`` from at most this many
        patches per input feature (``in_channels * kh * kw``), drawn at random from all the rollout's patches (every
        example, every output position), as TF K-FAC does; the output factors still come from every example. The
        factor's cost then no longer grows with the rollout (an update of the ``atari`` section 2.2x cheaper at 32
        envs x 20 steps, and averaged factors within 1 % of every patch's on Breakout: see ``docs/misc/cost.md``). None:
        every patch
    :param stats_batch_size: Number of the rollout's examples, drawn at random at every statistics update, on which
        the Fisher is sampled and the Kronecker factors are estimated; the gradient always uses the whole rollout. A
        subset gets a forward and a Fisher backward pass of its own, so the statistics cost about
        ``stats_batch_size / (n_steps * n_envs)`` of the whole rollout's, and the running averages (``stats_decay``)
        absorb the extra noise. ``None``, or a rollout no larger: the statistics come from the whole rollout's own
        forward pass. Saves time on convolutional policies, not on small MLPs (whose statistics cost per operation). On
        Breakout, 160 of 640 examples (the zoo's ``atari`` section) reached 10 at 650k-700k steps (seeds 0-2), 64 stayed
        at A2C's level (seed 0; see ``docs/misc/cost.md``). ``"auto"`` (default): for a network with convolutions a
        quarter of the rollout, but at least 160 examples; for one without, the whole rollout
    :param stats_update_interval: Update the Kronecker factors every this many updates. ``"auto"`` (default): every
        update for a network with convolutions (its statistics come from a subset, ``stats_batch_size``), every 4 updates
        otherwise (see ``docs/misc/benchmarks.md``, "Library defaults on unseen tasks")
    :param inverse_update_interval: Refresh the inverses of the factors every this many updates
    :param async_inverse: Refresh the inverses in a background thread (non-deterministic)
    :param distributed: Train data-parallel on ``torch.distributed``: each process (rank) collects its own rollouts
        (seeds offset by rank), and one all-reduce per update joins the ranks' gradients and Kronecker factors, so that
        every rank takes the step one process would take on all the ranks' rollouts. ``None`` (default): when launched
        by ``torchrun`` with several processes (or in a process group of several). Rank 0 logs and saves; the others
        stay silent. An integer ``stats_batch_size`` and ``patches_per_feature`` apply per rank (``"auto"`` to the joined
        rollouts)
    :param target_kl: KL divergence per update that the learning rate adapts to, by the rule of the paper's
        continuous-control code: after each update, the KL between the policies before and after it is measured on the
        rollout (one more forward pass); the learning rate (of the parameters the policy depends on; the critic's own
        region, ``vf_kl_clip``, keeps the schedule's) is divided by 1.5 for the next update when that KL exceeds
        ``2 * target_kl`` and multiplied by 1.5 when it is under ``target_kl / 2``, within 1e-3 to 100 times the
        schedule's value. Unlike PPO's ``target_kl``, which stops an update's epochs early, it never cuts an update
        short: it steers the next step's size. The trust region stays a hard bound: an update clipped by it has a KL
        of about ``kl_clip / 2``, so ``kl_clip`` should exceed ``4 * target_kl`` (the paper: 0.002 with a bound of
        0.01). ``None``: the learning rate follows its schedule
    :param log_kl: Log the KL divergence between the policies before and after each update (one more forward pass;
        always logged with ``target_kl``)
    :param log_trust_region_split: Log ``sum <V, grad>`` (the quantity the trust region bounds) of the policy loss with
        its entropy term alone (``train/actor_vg``) and of the weighted value loss alone (``train/critic_vg``), with the
        inverses of the previous update (two more backward passes and preconditionings), and
        ``train/critic_vg_exact_bound = (vf_coef / vf_fisher_coef)^2 * value_loss``, the most that ``critic_vg`` could
        be with the exact Fisher of the batch over the layers K-FAC covers. The block diagonal alone allows up to one
        bound per layer; a ``critic_vg`` far above that means that K-FAC's curvature underestimates the critic's (and
        the critic may take the trust region from the policy; ``benchmarks/critic_curvature.py`` splits the excess)
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, it will be automatically selected.
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation.
    :param normalize_advantage: Whether to normalize or not the advantage
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
        (``optimizer_class`` and ``optimizer_kwargs`` are not accepted: ACKTR brings its own optimizer)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": MlpPolicy,
        "CnnPolicy": CnnPolicy,
        "MultiInputPolicy": MultiInputPolicy,
    }
    policy: ActorCriticPolicy

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 0.25,
        n_steps: int = 20,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.01,
        vf_coef: float | Literal["auto"] = "auto",
        momentum: float = 0.9,
        kl_clip: float | Schedule = 0.001,
        vf_kl_clip: float | Schedule | Literal["auto"] | None = "auto",
        damping: float = 0.01,
        stats_decay: float = 0.99,
        vf_fisher_coef: float = 1.0,
        n_critic_updates: int = 1,
        damping_mode: DampingMode = "exact",
        conv_mode: ConvMode = "expand",
        patches_per_feature: int | None = 4,
        stats_batch_size: int | Literal["auto"] | None = "auto",
        stats_update_interval: int | Literal["auto"] = "auto",
        inverse_update_interval: int = 10,
        async_inverse: bool = False,
        distributed: bool | None = None,
        target_kl: float | None = None,
        log_kl: bool = False,
        log_trust_region_split: bool = False,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        normalize_advantage: bool = False,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        if not callable(learning_rate):
            check_number("learning_rate", learning_rate, 0.0, math.inf)
        if env is not None:
            env = maybe_make_env(env, verbose)
            _check_observation_space(env.observation_space)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,  # type: ignore[arg-type]  # "auto" until the policy is built (see _resolve_critic_settings)
            max_grad_norm=0.0,  # unused: the trust region bounds the step
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=SUPPORTED_ACTION_SPACES,
        )
        check_device(self.device)
        for key in ("optimizer_class", "optimizer_kwargs"):
            if key in self.policy_kwargs:
                raise ValueError(f"ACKTR does not accept policy_kwargs['{key}']: it always uses its K-FAC optimizer")
        for name, value in (("vf_coef", vf_coef), ("ent_coef", ent_coef), ("vf_fisher_coef", vf_fisher_coef)):
            if not (name == "vf_coef" and value == "auto"):
                check_number(name, value, 0.0, math.inf)
        check_integer("n_critic_updates", n_critic_updates)
        _check_critic_updates(n_critic_updates, vf_kl_clip)
        if stats_batch_size not in (None, "auto"):
            check_integer("stats_batch_size", stats_batch_size, minimum=2)
        self.normalize_advantage = normalize_advantage
        self.momentum = momentum
        self.kl_clip = kl_clip
        self.vf_kl_clip = vf_kl_clip
        self.damping = damping
        self.stats_decay = stats_decay
        self.vf_fisher_coef = vf_fisher_coef
        self.n_critic_updates = n_critic_updates
        self.damping_mode = damping_mode
        self.conv_mode = conv_mode
        self.patches_per_feature = patches_per_feature
        self.stats_batch_size = stats_batch_size
        self.stats_update_interval = stats_update_interval
        self.inverse_update_interval = inverse_update_interval
        self.async_inverse = async_inverse
        self.distributed = distributed
        self._process_group: Any | None = None
        if target_kl is not None:
            check_number("target_kl", target_kl, 0.0, math.inf, low_open=True)
        self.target_kl = target_kl
        self.step_size_factor = 1.0
        self.log_kl = log_kl
        self.log_trust_region_split = log_trust_region_split
        # Checked before any network is built, so that a bad value costs nothing (both bounds: by _trust_region_bounds).
        check_hyperparameters(kl_clip=self._trust_region_bounds()[0], **self._kfac_kwargs(convolutional=False))
        _warn_if_first_order_learning_rate(learning_rate)

        self._rollout_start: RolloutStart | None = None
        self._moments_at_last_join: list[RunningMeanStd] | None = None
        self._saved_random_state: dict[str, Any] | None = None

        if _init_setup_model:
            self._setup_model()

    def _kfac_kwargs(self, convolutional: bool) -> dict[str, Any]:
        """
        The K-FAC hyperparameters other than the trust-region bounds (see ``_trust_region_bounds``), for a network with
        convolutions or without.
        """
        return dict(
            momentum=self.momentum,
            damping=self.damping,
            stats_decay=self.stats_decay,
            damping_mode=self.damping_mode,
            conv_mode=self.conv_mode,
            patches_per_feature=self.patches_per_feature,
            stats_update_interval=resolve_stats_update_interval(self.stats_update_interval, convolutional),
            inverse_update_interval=self.inverse_update_interval,
        )

    def _setup_model(self) -> None:
        self._process_group = None
        if self.distributed or (self.distributed is None and distributed.launched_on_several_processes()):
            self.device = distributed.local_device(self.device)
            distributed.join_process_group(self.device)
            self._process_group = dist.group.WORLD
        super()._setup_model()
        if not isinstance(self.policy, ActorCriticPolicy):
            raise TypeError(
                f"ACKTR needs an ActorCriticPolicy (with mlp_extractor, action_net and value_net), "
                f"got {type(self.policy).__name__}"
            )
        _check_training_interface(self.policy)
        self._resolve_critic_settings()
        self._build_optimizer()
        if self._process_group is not None:
            distributed.broadcast_from_first_rank([*self.policy.parameters(), *self.policy.buffers()])

    def _resolve_critic_settings(self) -> None:
        """``vf_coef`` and ``vf_kl_clip`` given as ``"auto"``, resolved for the built policy (the model keeps the values)."""
        if "auto" in (self.vf_coef, self.vf_kl_clip):
            shared = shares_parameters(self.policy, self.observation_space)
            self.vf_coef = resolve_vf_coef(self.vf_coef, shared)
            self.vf_kl_clip = resolve_vf_kl_clip(self.vf_kl_clip, shared, self.n_critic_updates)
        check_number("vf_coef", self.vf_coef, 0.0, math.inf)  # also a value given to load

    def set_random_seed(self, seed: int | None = None) -> None:
        """Seed the random generators; in data-parallel training, each rank from ``seed + rank * n_envs``."""
        if seed is not None and self._process_group is not None:
            seed += distributed.rank() * self.n_envs
        super().set_random_seed(seed)

    def _trust_region_bounds(self, progress_remaining: float = 1.0) -> list[float]:
        """
        The trust-region bounds, checked: the optimizer is built with the initial ones, ``train()`` sets the current
        ones. A schedule may reach 0 once training has started (the update then adds no new direction; momentum still
        carries the previous ones).

        :param progress_remaining: Progress remaining, from 1 (start) to 0 (end)
        :return: ``kl_clip``, then ``vf_kl_clip`` when the critic has its own region
        """
        bounds: dict[str, Any] = {"kl_clip": self.kl_clip}
        if self.vf_kl_clip is not None and self.vf_kl_clip != "auto":  # "auto" until the policy is built
            bounds["vf_kl_clip"] = self.vf_kl_clip
        values = []
        for name, bound in bounds.items():
            value = bound(progress_remaining) if callable(bound) else bound
            may_be_zero = callable(bound) and progress_remaining < 1.0  # a decayed schedule, not a starting bound
            check_number(name, value, 0.0, math.inf, low_open=not may_be_zero)
            values.append(float(value))
        return values

    def _build_optimizer(self) -> None:
        # Again here: load() sets n_critic_updates and vf_kl_clip without the constructor, and so may the saved layout.
        _check_critic_updates(self.n_critic_updates, self.vf_kl_clip)
        kl_clip, *vf_kl_clip = self._trust_region_bounds()
        trust_regions = []
        if vf_kl_clip:
            critic_params = critic_only_parameters(self.policy, self.observation_space)
            trust_regions.append(dict(name=VALUE_REGION, params=critic_params, kl_clip=vf_kl_clip[0]))
        self.policy.optimizer = KFAC(
            self.policy,
            lr=self.lr_schedule(1),
            kl_clip=kl_clip,
            async_inverse=self.async_inverse,
            trust_regions=trust_regions,
            process_group=self._process_group,
            **self._kfac_kwargs(has_convolutions(self.policy)),
        )
        if self.policy.optimizer.uncovered_parameters and self.verbose >= 1:
            print(f"K-FAC does not model these parameters (plain gradient): {self.policy.optimizer.uncovered_parameters}")

    @classmethod
    def load(  # type: ignore[override]
        cls: type[SelfACKTR],
        path: str | pathlib.Path | io.BufferedIOBase,
        env: GymEnv | None = None,
        device: th.device | str = "auto",
        custom_objects: dict[str, Any] | None = None,
        print_system_info: bool = False,
        force_reset: bool = True,
        **kwargs: Any,
    ) -> SelfACKTR:
        """
        SB3's ``load``, after checking that a saved file is a whole zip (a truncated save is named as such). A zip saved
        without the K-FAC optimizer state loads with a warning (its statistics, inverses and momentum start anew). A
        ``CnnPolicy`` saved before its heads read the features directly loads with the 64-64 layers it was trained with.
        """
        _check_saved_zip(path)
        token = _LOADING.set(True)
        try:
            return super().load(path, env, device, custom_objects, print_system_info, force_reset, **kwargs)
        finally:
            _LOADING.reset(token)

    def set_parameters(
        self,
        load_path_or_dict: str | pathlib.Path | io.BufferedIOBase | dict[str, Any],
        exact_match: bool = True,
        device: th.device | str = "auto",
    ) -> None:
        """
        Load parameters (see SB3's ``set_parameters``: with ``exact_match``, parameters without one of the model's
        objects, the K-FAC optimizer included, are refused). The saved optimizer state decides the trust-region layout:
        a model saved with one trust region (``vf_kl_clip=None``, or saved before ``vf_kl_clip`` existed) loads with
        one, a model saved with a separate critic region loads with it; the bounds themselves are this model's. While
        loading, a ``CnnPolicy`` saved with its former default network is rebuilt with it (see ``FORMER_CNN_NET_ARCH``).
        """
        if isinstance(load_path_or_dict, dict):
            params = load_path_or_dict
        else:
            _, params, _ = load_from_zip_file(load_path_or_dict, device=device, load_data=False)
        if _LOADING.get():
            self._match_former_cnn_heads(params.get("policy", {}))
        saved_optimizer: Any = params.get("policy.optimizer")
        if saved_optimizer is not None:
            self._match_trust_regions(len(saved_optimizer["param_groups"]), saved_optimizer["param_groups"][-1])
        elif "policy" in params and (_LOADING.get() or not exact_match):
            warnings.warn(
                "The saved model has no K-FAC optimizer state (policy.optimizer.pth): the curvature statistics, inverses "
                "and momentum start anew, so training does not continue exactly as the saved run would have",
                stacklevel=2,
            )
            exact_match = False
        try:
            super().set_parameters(params, exact_match=exact_match, device=device)
        except RuntimeError as error:
            if "state_dict" not in str(error):
                raise
            # A RuntimeError with PyTorch's text, as SB3's contract: its load() retries A2C/PPO zips saved before 1.7.
            raise RuntimeError(
                "The saved policy's layers do not match this model's: build the model with the policy_kwargs (net_arch, "
                f"features extractor, ...) that the saved one was trained with ({error})"
            ) from error

    def _match_former_cnn_heads(self, saved_policy: dict[str, th.Tensor]) -> None:
        """Rebuild a ``CnnPolicy`` built without ``net_arch`` whose saved weights have the former default's layers."""
        saved_layers = any(name.startswith("mlp_extractor.policy_net.") for name in saved_policy)
        if not (saved_layers and isinstance(self.policy, CnnPolicy) and "net_arch" not in self.policy_kwargs):
            return
        self.policy_kwargs = {**self.policy_kwargs, "net_arch": FORMER_CNN_NET_ARCH}
        self.kfac.remove_hooks()
        self._setup_model()

    def _match_trust_regions(self, n_saved_groups: int, last_saved_group: dict[str, Any]) -> None:
        if n_saved_groups == len(self.kfac.param_groups):
            return
        if n_saved_groups == 1:
            vf_kl_clip = None
        elif n_saved_groups == 2 and last_saved_group.get("name") == VALUE_REGION:
            # This model has one region, so no vf_kl_clip of its own: keep the saved model's last bound (the default
            # when a schedule had brought it to 0).
            vf_kl_clip = last_saved_group["kl_clip"] or DEFAULT_VF_KL_CLIP
        else:
            raise ValueError(f"The saved K-FAC state has {n_saved_groups} trust regions; ACKTR uses one or two")
        warnings.warn(
            f"The saved model has {n_saved_groups} trust region(s): loading it with vf_kl_clip={vf_kl_clip} "
            f"instead of {self.vf_kl_clip}",
            stacklevel=3,
        )
        self.vf_kl_clip = vf_kl_clip
        self.kfac.remove_hooks()
        self._build_optimizer()

    @property
    def kfac(self) -> KFAC:
        """The policy's K-FAC optimizer."""
        assert isinstance(self.policy.optimizer, KFAC)
        return self.policy.optimizer

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        # The last rollout may overshoot the budget: schedules are not defined past the end (a linear learning rate
        # or bound would turn negative).
        super()._update_current_progress_remaining(num_timesteps, total_timesteps)
        self._current_progress_remaining = max(self._current_progress_remaining, 0.0)

    def _update_optimizer_hyperparameters(self) -> None:
        """
        Write this model's trust-region bounds (at the current progress), momentum and damping into the optimizer's
        param groups, as SB3 does for the learning rate: a loaded optimizer state carries the values it was saved with,
        and values given to ``load`` must win (a new damping from the next inverse refresh).
        """
        self._apply_statistics_settings()
        bounds = self._trust_region_bounds(self._current_progress_remaining)
        if len(bounds) != len(self.kfac.param_groups):
            raise ValueError(
                f"vf_kl_clip={self.vf_kl_clip} does not match the built optimizer's {len(self.kfac.param_groups)} trust "
                "region(s): the layout of the regions is fixed once the model is built (build a new model to change it)"
            )
        for group, bound in zip(self.kfac.param_groups, bounds, strict=True):
            group.update(kl_clip=bound, momentum=self.momentum, damping=self.damping)
        self.logger.record("train/kl_clip", bounds[0])
        if len(bounds) > 1:
            self.logger.record("train/vf_kl_clip", bounds[1])

    def _apply_statistics_settings(self) -> None:
        """
        Hand the statistics and inverse settings of this model to its optimizer, so that attributes set between ``learn``
        calls take effect; the ones fixed when the optimizer is built are refused when they changed.
        """
        kfac = self.kfac
        self._resolve_critic_settings()
        for name in ("damping_mode", "conv_mode", "async_inverse"):
            if getattr(self, name) != getattr(kfac, name):
                raise ValueError(
                    f"{name} cannot change on a built model ({getattr(kfac, name)!r} -> {getattr(self, name)!r}): save the "
                    f"model and load it with {name}={getattr(self, name)!r}"
                )
        _check_critic_updates(self.n_critic_updates, self.vf_kl_clip)
        settings = self._kfac_kwargs(has_convolutions(self.policy))
        check_hyperparameters(kl_clip=self._trust_region_bounds()[0], **settings)
        kfac.stats_decay = settings["stats_decay"]
        kfac.stats_update_interval = settings["stats_update_interval"]
        kfac.inverse_update_interval = settings["inverse_update_interval"]
        for block in kfac.blocks:
            block.set_patches_per_feature(settings["patches_per_feature"])

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer (one K-FAC step over the whole batch).
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        self._apply_step_size_factor()
        self._update_optimizer_hyperparameters()
        kfac = self.kfac

        for rollout_data in self.rollout_buffer.get(batch_size=None):
            actions = rollout_data.actions
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.long().flatten()

            update_statistics = kfac.statistics_due()
            subset = None
            if update_statistics:
                batch_size = len(rollout_data.advantages)
                world_size = 1 if self._process_group is None else dist.get_world_size(self._process_group)
                stats_batch_size = resolve_stats_batch_size(
                    self.stats_batch_size, batch_size, has_convolutions(self.policy), world_size
                )
                subset = statistics_subset(batch_size, stats_batch_size, self.device)
            if subset is not None:
                # Before the whole batch's forward pass: the policy reuses one distribution object for every forward.
                self._update_statistics(select_observations(rollout_data.observations, subset))
            statistics_from_this_pass = update_statistics and subset is None
            with kfac.capture_statistics(enabled=statistics_from_this_pass):
                distribution, values = forward_actor_critic(self.policy, rollout_data.observations)
            if statistics_from_this_pass:
                kfac.update_statistics(self._fisher_loss(distribution, values))

            log_prob = distribution.log_prob(actions)
            entropy = distribution.entropy()
            advantages = rollout_data.advantages
            if self.normalize_advantage and len(advantages) > 1:  # one example has no spread (PPO's guard)
                advantages = self._normalize(advantages)

            policy_loss = -(advantages * log_prob).mean()
            value_loss = F.mse_loss(rollout_data.returns, values)
            entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
            actor_loss = policy_loss + self.ent_coef * entropy_loss
            loss = actor_loss + self.vf_coef * value_loss
            if self.log_trust_region_split:
                self._log_trust_region_split(actor_loss, value_loss)

            kfac.zero_grad()
            loss.backward()
            kfac.step()
            self._check_progress(kfac)

            if self.log_kl or self.target_kl is not None:
                kl = self._update_kl(distribution, rollout_data.observations)
                self.logger.record("train/kl", kl)
                if self.target_kl is not None and kfac.consecutive_skipped_steps == 0:  # a skipped update says nothing
                    self._adapt_step_size(kl)
            if self.n_critic_updates > 1:  # after the KL: the policy does not depend on the critic-only parameters
                self._fit_critic(rollout_data.observations, rollout_data.returns)

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        self._n_updates += 1
        self._rollout_start = None
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/explained_variance", explained_var)
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        for key, value in kfac.diagnostics(per_layer=self.verbose >= 2).items():
            self.logger.record(f"kfac/{key}", value)

    def _fit_critic(self, observations: PyTorchObs, returns: th.Tensor) -> None:
        """
        The further critic steps: the value loss's gradient for the critic-only parameters, preconditioned and bounded by
        their trust region (with the inverses and statistics of this update's first step).
        """
        kfac = self.kfac
        critic_params = next(group["params"] for group in kfac.param_groups if group["name"] == VALUE_REGION)
        for _ in range(self.n_critic_updates - 1):
            value_loss = F.mse_loss(returns, critic_values(self.policy, observations))
            grads = th.autograd.grad(self.vf_coef * value_loss, critic_params, allow_unused=True)
            kfac.zero_grad()
            for param, grad in zip(critic_params, grads, strict=True):
                param.grad = grad
            kfac.step(further=True)
        with th.no_grad():
            fitted_loss = F.mse_loss(returns, self.policy.predict_values(observations).flatten())
        self.logger.record("train/fitted_value_loss", fitted_loss.item())

    def _update_kl(self, distribution: Distribution, observations: PyTorchObs) -> float:
        """KL divergence between the policies before and after the update, averaged over the rollout (of every rank)."""
        # The policy's Distribution object is reused by every forward: keep the old one's parameters.
        old_distribution = copy.copy(distribution)
        with th.no_grad():
            new_distribution = action_distribution(self.policy, observations)
            # Per-dimension KLs (diagonal Gaussian, Bernoulli) add up to the KL of the joint action.
            kl = kl_divergence(old_distribution, new_distribution)
            kl = kl.reshape(kl.shape[0], -1).sum(dim=1).mean()
            if self._process_group is not None:
                (kl,) = all_reduce_mean([kl], self._process_group)
        return kl.item()

    def _adapt_step_size(self, kl: float) -> None:
        """The paper's rule: a smaller step after an update far above ``target_kl``, a larger one far below it."""
        assert self.target_kl is not None
        if kl > 2.0 * self.target_kl:
            self.step_size_factor /= STEP_SIZE_ADAPTATION
        elif kl < 0.5 * self.target_kl:
            self.step_size_factor *= STEP_SIZE_ADAPTATION
        low, high = STEP_SIZE_FACTOR_BOUNDS
        self.step_size_factor = min(max(self.step_size_factor, low), high)

    def _apply_step_size_factor(self) -> None:
        """Scale the learning rate of the policy's trust region(s) by the adaptive step's factor."""
        if self.target_kl is None:
            return
        for group in self.kfac.param_groups:
            if group["name"] != VALUE_REGION:
                group["lr"] *= self.step_size_factor
        self.logger.record("train/step_size_factor", self.step_size_factor)

    def _normalize(self, advantages: th.Tensor) -> th.Tensor:
        """Advantages standardised by their mean and standard deviation over the rollout (of every rank)."""
        if self._process_group is not None:
            mean, std = distributed.global_mean_and_std(advantages)
        else:
            mean, std = advantages.mean(), advantages.std()
        return (advantages - mean) / (std + 1e-8)

    def _update_statistics(self, observations: PyTorchObs) -> None:
        """Curvature statistics from a forward and a Fisher backward pass of their own over ``observations``."""
        with self.kfac.capture_statistics():
            distribution, values = forward_actor_critic(self.policy, observations)
        self.kfac.update_statistics(self._fisher_loss(distribution, values))

    def _fisher_loss(self, distribution: Distribution, values: th.Tensor) -> th.Tensor:
        """The Fisher loss of a forward pass, with independent action samples."""
        if self.use_sde:
            # One exploration matrix per example (as TRPO does): with the rollout's single matrix, the sampled noise of
            # all examples would be one linear function of their features, and identical observations would draw the
            # same action. The next rollout draws its own matrix again.
            self.policy.reset_noise(len(values))
        return fisher_loss(distribution, values, self.vf_fisher_coef)

    def _log_trust_region_split(self, actor_loss: th.Tensor, value_loss: th.Tensor) -> None:
        kfac = self.kfac
        self.logger.record("train/actor_vg", kfac.natural_gradient_inner(actor_loss))
        self.logger.record("train/critic_vg", kfac.natural_gradient_inner(self.vf_coef * value_loss))
        bound = (self.vf_coef / self.vf_fisher_coef) ** 2 * value_loss.item() if self.vf_fisher_coef > 0 else math.inf
        self.logger.record("train/critic_vg_exact_bound", bound)

    def _check_progress(self, kfac: KFAC) -> None:
        """Stop with an explanation when updates keep being skipped for non-finite gradients."""
        if kfac.consecutive_skipped_steps >= MAX_CONSECUTIVE_SKIPPED_UPDATES:
            raise RuntimeError(
                f"ACKTR skipped the last {kfac.consecutive_skipped_steps} updates because their gradient was not finite "
                "(NaN or inf): the rollouts keep producing non-finite rewards, returns or observations. Find the source "
                "with stable_baselines3.common.vec_env.VecCheckNan, then fix or clip it (e.g. VecNormalize, reward "
                "scaling). The parameters are unchanged since the last finite update."
            )

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: RolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        # Until train() has used this rollout, a checkpoint resumes from the rollout's start (see save()).
        normalization = self._vec_normalize_env
        self._rollout_start = RolloutStart(
            self.num_timesteps,
            copy.deepcopy(self._last_obs),
            copy.deepcopy(self._last_episode_starts),
            capture_random_state(),
            None if normalization is None else copy.deepcopy((normalization.obs_rms, normalization.ret_rms)),
        )
        try:
            continue_training = super().collect_rollouts(env, callback, rollout_buffer, n_rollout_steps)
        except ValueError as error:
            if not all_finite(self._last_obs):
                raise ValueError(
                    "ACKTR: the environment returned a non-finite observation (NaN or inf), which the policy cannot "
                    "act on. Find the source with stable_baselines3.common.vec_env.VecCheckNan, then fix or clip the "
                    "observation (e.g. with VecNormalize or an ObservationWrapper)."
                ) from error
            raise
        if self._process_group is not None:
            continue_training = self._join_rollouts(env, continue_training, n_rollout_steps)
        return continue_training

    def _join_rollouts(self, env: VecEnv, continue_training: bool, n_rollout_steps: int) -> bool:
        """
        After each rank's rollout: go on only if every rank's callbacks agree, count the timesteps of all ranks, and
        join the ranks' ``VecNormalize`` statistics.
        """
        continue_training = distributed.all_ranks_agree(continue_training)
        self.num_timesteps += (dist.get_world_size() - 1) * n_rollout_steps * env.num_envs
        normalization = unwrap_vec_normalize(env)
        if normalization is not None and normalization.training and self._moments_at_last_join is not None:
            for before, after in zip(self._moments_at_last_join, running_moments(normalization), strict=True):
                distributed.join_running_moments(before, after)
            self._moments_at_last_join = copy.deepcopy(running_moments(normalization))
        return continue_training

    def dump_logs(self, iteration: int = 0) -> None:
        """SB3's logs; in data-parallel training, with the episodes of every rank (written by rank 0)."""
        if self._process_group is None or self.ep_info_buffer is None:
            super().dump_logs(iteration)
            return
        own_episodes = self.ep_info_buffer
        self.ep_info_buffer = deque(distributed.gather_episodes(own_episodes))
        try:
            super().dump_logs(iteration)
        finally:
            self.ep_info_buffer = own_episodes

    def save(
        self,
        path: str | pathlib.Path | io.BufferedIOBase,
        exclude: Iterable[str] | None = None,
        include: Iterable[str] | None = None,
    ) -> None:
        """
        Save the model, its K-FAC state and the random state needed to resume exactly.

        A model saved while a rollout is being collected or trained on (e.g. by ``CheckpointCallback``) is saved as
        of the start of that rollout: loaded with ``force_reset=False`` and trained with ``reset_num_timesteps=False``
        on an environment in the state it had then, it repeats that rollout and continues exactly as the original run.
        In data-parallel training, only rank 0 saves (every rank holds the same model).
        """
        if self._process_group is not None and distributed.rank() != 0:
            return
        start = self._rollout_start
        current = (self.num_timesteps, self._last_obs, self._last_episode_starts)
        if start is not None:
            self.num_timesteps, self._last_obs, self._last_episode_starts = (
                start.num_timesteps,
                start.last_obs,
                start.episode_starts,
            )
        self._saved_random_state = start.random_state if start is not None else capture_random_state()
        try:
            super().save(path, exclude=exclude, include=include)
        finally:
            self.num_timesteps, self._last_obs, self._last_episode_starts = current
            self._saved_random_state = None

    def get_vec_normalize_env(self) -> VecNormalize | None:
        """
        The ``VecNormalize`` wrapper of the training environment, if any. While a rollout is collected or trained on, a
        shallow copy of it with the statistics as of the rollout's start: the moment ``save()`` writes the model as of,
        so that a checkpoint's model and ``VecNormalize`` statistics resume together.
        """
        normalization = super().get_vec_normalize_env()
        start = self._rollout_start
        if normalization is None or start is None or start.normalization is None:
            return normalization
        at_start = object.__new__(type(normalization))  # not copy.copy: VecNormalize copies as it pickles, incompletely
        vars(at_start).update(vars(normalization))
        at_start.obs_rms, at_start.ret_rms = copy.deepcopy(start.normalization)
        return at_start

    def _excluded_save_params(self) -> list[str]:
        # Whether training is data-parallel depends on how the loading process is launched, not on the saved one.
        return [*super()._excluded_save_params(), "_rollout_start", "distributed", "_process_group", "_moments_at_last_join"]

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: MaybeCallback = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> tuple[int, BaseCallback]:
        self._check_optimizer_owns_parameters()
        first_rank = self._process_group is None or distributed.rank() == 0
        if not reset_num_timesteps and self._saved_random_state is not None and first_rank:
            # Resuming a loaded checkpoint: continue the random streams where the saved run was (the other ranks keep
            # their own streams, seeded apart).
            restore_random_state(self._saved_random_state)
        self._saved_random_state = None
        if self._process_group is None:
            return super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        distributed.check_equal_on_every_rank("rollout size (n_envs * n_steps)", self.n_envs * self.n_steps)
        normalization = unwrap_vec_normalize(self.env) if self.env is not None else None
        # Equal on every rank here (new, or loaded from one file), before the reset adds each rank's first observations.
        self._moments_at_last_join = copy.deepcopy(running_moments(normalization)) if normalization is not None else None
        result = super()._setup_learn(total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar)
        if distributed.rank() != 0:
            self._logger = Logger(None, [])
        return result

    def _check_optimizer_owns_parameters(self) -> None:
        owned = {id(param) for group in self.kfac.param_groups for param in group["params"]}
        missing = [name for name, param in self.policy.named_parameters() if param.requires_grad and id(param) not in owned]
        if missing:
            raise ValueError(
                f"These trainable parameters of the policy are not owned by its K-FAC optimizer and would never be "
                f"trained: {missing}. Change the policy through policy_kwargs (or a policy class) before the model is "
                "built, not afterwards."
            )

    def learn(
        self: SelfACKTR,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 100,
        tb_log_name: str = "ACKTR",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfACKTR:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


def _check_saved_zip(path: str | pathlib.Path | io.BufferedIOBase) -> None:
    """
    Refuse a save whose zip is cut short or whose directory is damaged (by a crash or a full disk while saving), naming
    the file; a member damaged inside is reported by SB3's load (a ``ValueError`` too).
    """
    if not isinstance(path, (str, pathlib.Path)):
        return
    file = next((candidate for candidate in (pathlib.Path(path), pathlib.Path(f"{path}.zip")) if candidate.is_file()), None)
    if file is None:
        return  # SB3 names the missing file
    # Opening reads only the zip's directory (at its end): a cut-short file fails here or lacks its data entry, and the
    # members themselves are read once, by SB3's load.
    try:
        with zipfile.ZipFile(file) as archive:
            problem = None if "data" in archive.namelist() else "no data entry"
    except zipfile.BadZipFile as error:
        problem = str(error)
    if problem is not None:
        raise ValueError(
            f"{file} is not a whole model save (a zip file cut short or damaged, e.g. by a crash or a full disk while "
            f"saving: {problem}): save the model again, or load an earlier checkpoint"
        )


def _check_critic_updates(n_critic_updates: int, vf_kl_clip: float | Schedule | Literal["auto"] | None) -> None:
    if n_critic_updates > 1 and vf_kl_clip is None:
        raise ValueError(
            "n_critic_updates > 1 fits the critic-only parameters in their own trust region, but this model has one "
            f'trust region (vf_kl_clip=None, or a model saved with one, as "auto" saves actor and critic that share '
            f"parameters): set vf_kl_clip (e.g. {DEFAULT_VF_KL_CLIP}) "
            "for a new model, or use n_critic_updates=1"
        )


def _check_training_interface(policy: ActorCriticPolicy) -> None:
    """Refuse a policy whose own evaluate_actions training would bypass (see ``forward_actor_critic``)."""
    overrides = type(policy).evaluate_actions is not ActorCriticPolicy.evaluate_actions
    if overrides and not hasattr(policy, TRAINING_HOOK):
        raise ValueError(
            f"{type(policy).__name__} overrides evaluate_actions, which ACKTR's training cannot call: K-FAC samples the "
            f"Fisher from the action distribution, which evaluate_actions does not return. Define "
            f"{TRAINING_HOOK}(obs) -> (Distribution, values) as well, computing what your evaluate_actions computes in "
            "one forward pass; ACKTR trains through it."
        )


# Below this, a learning rate was most likely meant for a first-order optimizer (A2C's 7e-4, PPO's 3e-4).
FIRST_ORDER_LEARNING_RATE = 0.01


def _warn_if_first_order_learning_rate(learning_rate: float | Schedule) -> None:
    initial = learning_rate(1.0) if callable(learning_rate) else learning_rate
    if 0.0 < initial < FIRST_ORDER_LEARNING_RATE:
        warnings.warn(
            f"learning_rate={initial:g} looks like a rate for A2C or PPO. ACKTR's rate multiplies a natural-gradient step "
            f"that the trust region (kl_clip) bounds, and its default is 0.25: this one makes the steps up to "
            f"{0.25 / initial:.0f}x shorter.",
            stacklevel=3,
        )


def _check_observation_space(space: spaces.Space) -> None:
    """Refuse, before any wrapper or network is built, observation spaces that SB3's policies cannot encode."""
    subspaces = space.spaces.values() if isinstance(space, spaces.Dict) else [space]
    for subspace in subspaces:
        if isinstance(subspace, spaces.Dict) or not isinstance(subspace, SUPPORTED_OBSERVATION_SPACES):
            raise ValueError(
                f"ACKTR does not support {type(subspace).__name__} observation spaces ({subspace}): use Box, Discrete, "
                "MultiDiscrete, MultiBinary, or a flat Dict of these"
            )


def running_moments(normalization: VecNormalize) -> list[RunningMeanStd]:
    """The running moments that a ``VecNormalize`` updates: of each observation (key) it normalises, and of the returns."""
    moments = []
    if normalization.norm_obs:
        obs_rms = normalization.obs_rms
        moments += [obs_rms[key] for key in normalization.norm_obs_keys or []] if isinstance(obs_rms, dict) else [obs_rms]
    if normalization.norm_reward:
        moments.append(normalization.ret_rms)
    return moments
