"""ACKTR runs on every SB3 action space, policy layout and observation type."""

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import DEVICES, assert_no_numerical_trouble
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import CategoricalDistribution, Distribution
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from sb3_acktr import ACKTR, AcktrCNN
from sb3_acktr.acktr.acktr import action_distribution, actor_critic_pass, fisher_loss, forward_actor_critic
from sb3_acktr.kfac import KFAC
from sb3_acktr.kfac.blocks import ConvMode
from sb3_acktr.kfac.inverses import DampingMode


def parameters_finite(model: ACKTR) -> bool:
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


def silent_logger() -> Logger:
    return Logger(folder=None, output_formats=[])


def train_every_layer(model: ACKTR, total_timesteps: int) -> dict:
    """``train_without_dump``, then: every block has statistics and an inverse, every trainable parameter moved."""
    before = {name: param.detach().clone() for name, param in model.policy.named_parameters() if param.requires_grad}
    values = train_without_dump(model, total_timesteps)
    assert_no_numerical_trouble(model.kfac)
    assert all(model.kfac.factors(block) is not None and block in model.kfac._inverses for block in model.kfac.blocks)
    named = dict(model.policy.named_parameters())
    assert [name for name, old in before.items() if th.equal(named[name], old)] == []
    return values


def train_without_dump(model: ACKTR, total_timesteps: int) -> dict:
    """Learn without dumping the logger, and return the last recorded values."""
    model.set_logger(silent_logger())
    model.learn(total_timesteps, log_interval=10**9)
    return dict(model.logger.name_to_value)


@pytest.mark.parametrize(
    "env",
    [
        IdentityEnv(4),
        IdentityEnvBox(eps=0.5),
        IdentityEnvMultiDiscrete(3),
        IdentityEnvMultiBinary(3),
    ],
    ids=["discrete", "box", "multidiscrete", "multibinary"],
)
def test_every_action_space(env: gym.Env) -> None:
    model = ACKTR("MlpPolicy", env, n_steps=8, seed=0)
    values = train_every_layer(model, 64)
    assert parameters_finite(model)
    assert values["kfac/skipped_steps"] == 0
    assert values["kfac/trust_region_scale"] > 0


@pytest.mark.parametrize("damping_mode", ["exact", "factored"])
@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_damping_modes_and_shared_or_separate_extractors(damping_mode: DampingMode, share_features_extractor: bool) -> None:
    model = ACKTR(
        "CnnPolicy",
        FakeImageEnv(screen_height=36, screen_width=36, n_channels=1),
        n_steps=4,
        damping_mode=damping_mode,
        policy_kwargs=dict(share_features_extractor=share_features_extractor, features_extractor_kwargs=dict(features_dim=32)),
        seed=0,
    )
    names = {block.name for block in model.kfac.blocks}
    if share_features_extractor:
        assert any(name.startswith("features_extractor.cnn") for name in names)
    else:
        assert any(name.startswith("features_extractor.cnn") for name in names)
        assert any(name.startswith("vf_features_extractor.cnn") for name in names)
    values = train_without_dump(model, 16)
    assert parameters_finite(model)
    assert values["kfac/skipped_steps"] == 0


def test_single_trust_region_on_request() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=4, vf_kl_clip=None, seed=0)
    assert len(model.kfac.param_groups) == 1
    values = train_without_dump(model, 16)
    assert "kfac/value/trust_region_scale" not in values and 0 < values["kfac/trust_region_scale"] <= 1


@pytest.mark.parametrize(
    "policy, env, policy_kwargs, expected",
    [
        ("MlpPolicy", "CartPole-v1", {}, {"mlp_extractor.value_net", "value_net"}),
        ("MlpPolicy", "Pendulum-v1", dict(net_arch=[]), {"value_net"}),
        (
            "CnnPolicy",
            "image",
            dict(features_extractor_kwargs=dict(features_dim=32)),
            {"mlp_extractor.value_net", "value_net"},
        ),
        (
            "CnnPolicy",
            "image",
            dict(share_features_extractor=False),
            {"vf_features_extractor", "mlp_extractor.value_net", "value_net"},
        ),
    ],
)
def test_separate_critic_trust_region(policy: str, env: str | gym.Env, policy_kwargs: dict, expected: set[str]) -> None:
    if env == "image":
        env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1)
    model = ACKTR(policy, env, n_steps=4, vf_kl_clip=0.01, policy_kwargs=policy_kwargs, seed=0)
    names = {id(p): name for name, p in model.policy.named_parameters()}
    actor_group, critic_group = model.kfac.param_groups
    critic_names = {names[id(p)] for p in critic_group["params"]}
    assert critic_names == {name for name in names.values() if name.startswith(tuple(expected))}
    assert critic_group["kl_clip"] == 0.01 and actor_group["kl_clip"] == model.kl_clip
    values = train_without_dump(model, 16)
    assert 0 < values["kfac/value/trust_region_scale"] <= 1 and 0 < values["kfac/trust_region_scale"] <= 1
    assert parameters_finite(model)


@pytest.mark.parametrize("conv_mode", ["expand", "reduce"])
def test_cnn_conv_modes(conv_mode: ConvMode) -> None:
    model = ACKTR("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=4, conv_mode=conv_mode, seed=0)
    train_every_layer(model, 12)
    assert parameters_finite(model)


@pytest.mark.parametrize("low, high, shape", [(-10, 10, (1, 36, 36)), (0, 1, (4, 36, 36))])
def test_normalized_float_images_train_as_in_sb3(low: float, high: float, shape: tuple[int, ...]) -> None:
    """SB3's image-like input: with ``normalize_images=False``, float observations of any bounds go to the CNN as they are."""
    space = spaces.Box(low, high, shape, np.float32)
    env = FakeImageEnv(screen_height=36, screen_width=36, n_channels=1)
    env.observation_space = space
    env.reset = lambda **kwargs: (space.sample(), {})  # type: ignore[method-assign]
    env.step = lambda action: (space.sample(), 0.0, False, False, {})  # type: ignore[method-assign]
    model = ACKTR("CnnPolicy", env, n_steps=8, policy_kwargs=dict(normalize_images=False), seed=0)
    assert isinstance(model.policy.features_extractor, AcktrCNN)
    before = [param.detach().clone() for param in model.policy.features_extractor.parameters()]
    model.learn(8 * 3)
    moved = [not th.equal(old, new) for old, new in zip(before, model.policy.features_extractor.parameters(), strict=True)]
    assert all(moved)


def test_gsde_with_uncovered_parameters() -> None:
    model = ACKTR("MlpPolicy", "Pendulum-v1", n_steps=16, use_sde=True, sde_sample_freq=4, seed=0)
    assert "log_std" in model.kfac.uncovered_parameters
    values = train_without_dump(model, 64)
    assert values["kfac/uncovered_parameters"] == len(model.kfac.uncovered_parameters)
    assert parameters_finite(model)


def test_box_log_std_is_uncovered_and_trained() -> None:
    model = ACKTR("MlpPolicy", "Pendulum-v1", n_steps=16, seed=0)
    assert model.kfac.uncovered_parameters == ["log_std"]
    before = model.policy.log_std.detach().clone()
    values = train_without_dump(model, 64)
    assert not th.equal(model.policy.log_std.detach(), before)
    assert "train/std" in values


def test_empty_net_arch_and_dict_observations() -> None:
    model = ACKTR(
        "MultiInputPolicy", SimpleMultiObsEnv(random_start=False), n_steps=8, policy_kwargs=dict(net_arch=[]), seed=0
    )
    # Only the action and value heads, plus the image encoder of the combined extractor.
    assert {"action_net", "value_net"} <= {block.name for block in model.kfac.blocks}
    train_without_dump(model, 32)
    assert parameters_finite(model)


class NormalisedExtractor(BaseFeaturesExtractor):
    """A custom extractor with a layer K-FAC cannot model (LayerNorm) between two it can."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, features_dim=16)
        self.net = th.nn.Sequential(
            th.nn.Linear(int(np.prod(observation_space.shape)), 16), th.nn.LayerNorm(16), th.nn.ReLU(inplace=True)
        )

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


def test_custom_feature_extractor_with_uncovered_layer() -> None:
    model = ACKTR(
        "MlpPolicy", "CartPole-v1", n_steps=8, policy_kwargs=dict(features_extractor_class=NormalisedExtractor), seed=0
    )
    assert model.kfac.uncovered_parameters == ["features_extractor.net.1.weight", "features_extractor.net.1.bias"]
    train_every_layer(model, 32)
    assert parameters_finite(model)


def test_logging_keys_and_kl_flag() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, log_kl=True, seed=0, verbose=0)
    values = train_without_dump(model, 32)
    for key in (
        "train/explained_variance",
        "train/entropy_loss",
        "train/policy_loss",
        "train/value_loss",
        "train/learning_rate",
        "train/kl",
        "train/kl_clip",
        "train/vf_kl_clip",
        "kfac/trust_region_scale",
        "kfac/vg_sum",
        "kfac/inverse_age",
        "kfac/skipped_steps",
        "kfac/inverse_failures",
    ):
        assert key in values, key
    assert values["train/kl"] >= 0


def test_per_layer_diagnostics_at_verbose_2() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, verbose=2)
    values = train_without_dump(model, 16)
    assert "kfac/action_net/pi" in values
    assert values["kfac/action_net/A_eig_max"] >= values["kfac/action_net/A_eig_min"] >= 0


def test_trust_region_bounds_the_kl_of_one_update() -> None:
    """Momentum off, critic loss off, a learning rate the trust region must cut: KL(old || new) ~ kl_clip / 2."""
    kl_clip = 0.002
    model = ACKTR(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=4, seed=0),
        n_steps=32,
        learning_rate=100.0,
        momentum=0.0,
        kl_clip=kl_clip,
        vf_coef=0.0,
        ent_coef=0.0,
        log_kl=True,
        seed=0,
    )
    values = train_without_dump(model, 128)
    assert values["kfac/trust_region_scale"] < 1.0
    # K-FAC's damped block-diagonal curvature overestimates the true one a little: 0.36-0.89 of kl_clip / 2 on seeds 0-5
    # (0.55 on this one); a step off by a factor of 1.5 in length falls outside.
    assert 0.4 * kl_clip / 2 < values["train/kl"] < 1.2 * kl_clip / 2


def test_trust_region_split_without_a_critic_loss_is_the_whole_step() -> None:
    """vf_coef 0: the critic's part is 0 and the actor's is the step's sum <V, grad> (same inverses after the first)."""
    model = ACKTR(
        "MlpPolicy", "CartPole-v1", n_steps=16, vf_coef=0.0, vf_kl_clip=None, inverse_update_interval=100,
        log_trust_region_split=True, seed=0,
    )  # fmt: skip
    values = train_without_dump(model, 16 * 3)
    assert values["train/critic_vg"] == 0.0 and values["train/critic_vg_exact_bound"] == 0.0
    assert values["train/actor_vg"] > 0
    assert values["train/actor_vg"] == pytest.approx(values["kfac/vg_sum"], rel=1e-9)


def test_trust_region_split_logs_both_parts_with_two_regions() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=16, log_trust_region_split=True, seed=0)
    values = train_without_dump(model, 16 * 3)
    assert values["train/actor_vg"] > 0 and values["train/critic_vg"] > 0
    # The critic's own region holds only critic parameters: its sum <V, grad> is the critic's part.
    assert values["train/critic_vg"] == pytest.approx(values["kfac/value/vg_sum"], rel=1e-6)
    assert 0 < values["train/critic_vg_exact_bound"] < math.inf


def test_critic_vg_meets_its_exact_bound_for_a_linear_critic() -> None:
    """
    A linear critic is one exactly modelled K-FAC block: with the Fisher of the batch and a residual that is linear in
    the features, the critic's sum <V, grad> equals (vf_coef / vf_fisher_coef)^2 * mean squared error.
    """
    th.manual_seed(0)
    vf_coef, vf_fisher_coef, n = 0.5, 2.0, 4096
    critic = th.nn.Linear(5, 1)
    kfac = KFAC(critic, damping=1e-9, stats_decay=0.0)
    features = th.randn(n, 5)
    no_actor = CategoricalDistribution(2).proba_distribution(th.zeros(n, 2))
    with kfac.capture_statistics():
        values = critic(features).flatten()
    kfac.update_statistics(fisher_loss(no_actor, values, vf_fisher_coef))
    kfac.step()  # computes the inverses (no gradient yet: nothing moves)
    returns = values.detach() + features @ th.randn(5) + 0.3
    value_loss = th.nn.functional.mse_loss(returns, values)
    bound = (vf_coef / vf_fisher_coef) ** 2 * value_loss.item()
    # The sampled Fisher of 4096 samples is within a few per cent of the exact one.
    assert kfac.natural_gradient_inner(vf_coef * value_loss) == pytest.approx(bound, rel=0.1)


def test_scheduled_trust_regions_bind_at_their_current_bound() -> None:
    """Each of four updates clips to the schedules' values at the progress remaining when it trains (3/4 down to 0)."""

    class RecordBounds(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[dict] = []

        def _on_rollout_start(self) -> None:
            if self.model._n_updates:
                self.records.append(dict(self.model.logger.name_to_value))

        def _on_step(self) -> bool:
            return True

    model = ACKTR(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        n_steps=16,
        learning_rate=100.0,
        kl_clip=lambda progress: 0.001 * (1 + 4 * progress),
        vf_kl_clip=lambda progress: 0.002 * (1 + 4 * progress),
        seed=0,
    )
    model.set_logger(silent_logger())
    callback = RecordBounds()
    model.learn(32 * 4, callback=callback, log_interval=10**9)
    records = [*callback.records, dict(model.logger.name_to_value)]
    for record, progress in zip(records, (0.75, 0.5, 0.25, 0.0), strict=True):
        regions = (("train/kl_clip", "kfac/", 0.001), ("train/vf_kl_clip", "kfac/value/", 0.002))
        for bound_key, kfac_prefix, initial in regions:
            bound = initial * (1 + 4 * progress)
            assert record[bound_key] == pytest.approx(bound)
            scale, vg_sum = record[f"{kfac_prefix}trust_region_scale"], record[f"{kfac_prefix}vg_sum"]
            assert scale < 1.0 and 100.0**2 * scale**2 * vg_sum == pytest.approx(bound, rel=1e-6)


def test_schedules_end_at_zero_when_the_last_rollout_overshoots_the_budget() -> None:
    """7 timesteps in rollouts of 5: the last update trains at progress 0, not -3/7 (negative bounds or learning rates)."""
    model = ACKTR(
        "MlpPolicy",
        "CartPole-v1",
        n_steps=5,
        learning_rate=lambda progress: 0.25 * progress,
        kl_clip=lambda progress: 0.003 * progress,
        vf_kl_clip=lambda progress: np.float32(0.002 * progress),  # type: ignore[arg-type, return-value]  # NumPy numbers too
        seed=0,
    )
    values = train_without_dump(model, 7)
    assert model.num_timesteps == 10 and model.kfac.n_steps == 2
    assert [(group["lr"], group["kl_clip"]) for group in model.kfac.param_groups] == [(0.0, 0.0), (0.0, 0.0)]
    assert values["train/kl_clip"] == values["train/vf_kl_clip"] == 0.0


class MultiDimensionalAction(gym.Env):
    """Random observations, a 3-dimensional continuous action, reward -|action|^2."""

    observation_space = spaces.Box(-1, 1, (4,), np.float32)
    action_space = spaces.Box(-1, 1, (3,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):  # type: ignore[override]
        return self.observation_space.sample(), -float(np.sum(np.square(action))), False, False, {}


def test_logged_kl_is_the_kl_of_the_joint_action() -> None:
    """One update on a 3-dimensional Gaussian policy: train/kl sums the per-dimension KLs."""
    model = ACKTR("MlpPolicy", MultiDimensionalAction(), n_steps=16, log_kl=True, seed=0)
    before = copy.deepcopy(model.policy)
    values = train_without_dump(model, 16)  # exactly one update
    observations = th.as_tensor(model.rollout_buffer.observations.reshape(16, -1))
    with th.no_grad():
        old, new = before.get_distribution(observations).distribution, model.policy.get_distribution(observations).distribution
        assert isinstance(old, th.distributions.Distribution) and isinstance(new, th.distributions.Distribution)
        expected = th.distributions.kl_divergence(old, new).sum(dim=1).mean()
    assert values["train/kl"] == pytest.approx(expected.item(), rel=1e-4)


def test_progress_bar_and_vecnormalize() -> None:
    env = VecNormalize(DummyVecEnv([lambda: gym.make("Pendulum-v1")] * 2))
    model = ACKTR("MlpPolicy", env, n_steps=8, seed=0)
    model.learn(64, progress_bar=True)
    assert parameters_finite(model)


def test_acktr_cnn_extractor() -> None:
    model = ACKTR(
        "CnnPolicy",
        FakeImageEnv(screen_height=84, screen_width=84),
        n_steps=4,
        policy_kwargs=dict(features_extractor_class=AcktrCNN),
        seed=0,
    )
    fully_connected = model.policy.features_extractor.get_submodule("linear.0")
    assert isinstance(fully_connected, th.nn.Linear)
    assert fully_connected.in_features == 32 * 7 * 7  # half of NatureCNN's 3136
    assert "features_extractor.linear.0" in {block.name for block in model.kfac.blocks}
    train_without_dump(model, 8)
    assert parameters_finite(model)
    with pytest.raises(ValueError, match="image observation space"):
        ACKTR("MlpPolicy", "CartPole-v1", policy_kwargs=dict(features_extractor_class=AcktrCNN))


def test_fisher_loss_gradient_is_the_sampled_negative_log_likelihood_and_critic_term() -> None:
    """Its gradient: -grad log p(a) for actions drawn from the policy, and 2 c (V - y) with y ~ N(V, 1) for the critic."""
    logits = th.randn(5, 3, requires_grad=True)
    values = th.randn(5, requires_grad=True)
    distribution = CategoricalDistribution(3).proba_distribution(logits)
    validating = distribution.distribution._validate_args
    th.manual_seed(1)
    logits_grad, values_grad = th.autograd.grad(fisher_loss(distribution, values, 0.5), [logits, values])
    assert distribution.distribution._validate_args == validating  # restored after the sampled actions' log_prob
    th.manual_seed(1)
    actions = distribution.get_actions(deterministic=False)
    targets = values.detach() + th.randn_like(values)
    expected_logits_grad = th.softmax(logits.detach(), dim=1) - th.nn.functional.one_hot(actions, 3)
    assert th.allclose(logits_grad, expected_logits_grad, atol=1e-6)
    assert th.allclose(values_grad, 2 * 0.5 * (values.detach() - targets), atol=1e-6)


def test_gsde_fisher_samples_are_independent_across_examples(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two identical observations in one batch draw different Fisher actions (one exploration matrix per example)."""
    model = ACKTR("MlpPolicy", "Pendulum-v1", use_sde=True, n_steps=4, seed=0)
    obs = th.as_tensor(np.repeat(model.get_env().reset()[:1], 2, axis=0))  # type: ignore[union-attr,index]
    distribution, values = forward_actor_critic(model.policy, obs)
    drawn: list[th.Tensor] = []
    get_actions = distribution.get_actions

    def recording_get_actions(deterministic: bool = False) -> th.Tensor:
        drawn.append(get_actions(deterministic))
        return drawn[-1]

    monkeypatch.setattr(distribution, "get_actions", recording_get_actions)
    model._fisher_loss(distribution, values)
    assert drawn[0].shape == (2, 1) and not th.equal(drawn[0][0], drawn[0][1])


class DoubledValuePolicy(ActorCriticPolicy):
    """A custom policy: its values are twice the value head's, in rollouts and in training."""

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        actions, values, log_prob = super().forward(obs, deterministic)
        return actions, 2 * values, log_prob

    def predict_values(self, obs: PyTorchObs) -> th.Tensor:
        return 2 * super().predict_values(obs)

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        values, log_prob, entropy = super().evaluate_actions(obs, actions)
        return 2 * values, log_prob, entropy


class DoubledValuePolicyWithHook(DoubledValuePolicy):
    hook_calls: int = 0

    def distribution_and_values(self, obs: PyTorchObs) -> tuple[Distribution, th.Tensor]:
        self.hook_calls += 1
        distribution, values = actor_critic_pass(self, obs)
        return distribution, 2 * values


def test_a_policy_overriding_evaluate_actions_needs_the_training_hook() -> None:
    with pytest.raises(ValueError, match=r"overrides evaluate_actions.*distribution_and_values"):
        ACKTR(DoubledValuePolicy, "CartPole-v1")


def test_training_goes_through_the_policy_hook() -> None:
    model = ACKTR(DoubledValuePolicyWithHook, "CartPole-v1", n_steps=8, seed=0)
    model.set_logger(Logger(None, []))
    policy = model.policy
    assert isinstance(policy, DoubledValuePolicyWithHook)
    calls_at_construction = policy.hook_calls
    model.learn(8 * 3)
    assert policy.hook_calls >= calls_at_construction + 3
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, 4)[:4])
    _, values = forward_actor_critic(model.policy, obs)
    assert th.allclose(values, model.policy.predict_values(obs).flatten())  # training sees the rollouts' values


def test_the_critics_further_steps_go_through_the_policy_hook() -> None:
    model = ACKTR(DoubledValuePolicyWithHook, "CartPole-v1", n_steps=8, vf_kl_clip=0.01, n_critic_updates=3, seed=0)
    model.set_logger(Logger(None, []))
    policy = model.policy
    assert isinstance(policy, DoubledValuePolicyWithHook)
    calls_at_construction = policy.hook_calls
    model.learn(8 * 3)
    assert policy.hook_calls == calls_at_construction + 3 * 3  # per update: the joint step and two critic steps


@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_kl_forward_runs_the_actor_alone(share_features_extractor: bool) -> None:
    """The KL of an update needs the new action distribution only: the critic's layers are not run for it."""
    policy_kwargs = dict(share_features_extractor=share_features_extractor)
    model = ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, log_kl=True, policy_kwargs=policy_kwargs, seed=0)
    obs = th.as_tensor(model.get_env().reset())  # type: ignore[union-attr]
    expected, _ = forward_actor_critic(model.policy, obs)
    expected_log_prob = expected.log_prob(th.ones(1, 1)).clone()
    value_calls = []
    model.policy.value_net.register_forward_hook(lambda *_: value_calls.append(1))
    distribution = action_distribution(model.policy, obs)
    assert th.equal(distribution.log_prob(th.ones(1, 1)), expected_log_prob)
    assert not value_calls
    train_without_dump(model, 8)
    value_calls.clear()
    model.train()  # again on the same rollout
    assert len(value_calls) == 1  # the training forward, none for the KL
    assert model.logger.name_to_value["train/kl"] > 0.0


def test_kl_forward_goes_through_the_policy_hook() -> None:
    model = ACKTR(DoubledValuePolicyWithHook, "CartPole-v1", n_steps=8, seed=0)
    policy = model.policy
    assert isinstance(policy, DoubledValuePolicyWithHook)
    calls = policy.hook_calls
    action_distribution(policy, th.zeros(2, 4))
    assert policy.hook_calls == calls + 1


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_trains_on_each_device(device: str, policy: str) -> None:
    env = FakeImageEnv(screen_height=36, screen_width=36) if policy == "CnnPolicy" else "Pendulum-v1"
    model = ACKTR(policy, env, n_steps=8, inverse_update_interval=2, log_kl=True, device=device, seed=0)
    model.learn(8 * 4)
    assert all(param.device.type == device and th.isfinite(param).all() for param in model.policy.parameters())
    assert model.kfac.n_steps == 4
    assert_no_numerical_trouble(model.kfac)
    assert model.kfac.diagnostics()["inverse_seconds"] >= 0.0


def test_statistics_settings_set_between_learn_calls_take_effect() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, stats_update_interval=4, seed=0)
    model.set_logger(Logger(None, []))
    block = model.kfac.blocks[0]
    model.learn(8 * 4)
    assert model.kfac.state[block.weight]["statistics_count"] == 1
    model.stats_update_interval = 1
    model.stats_decay = 0.5
    model.learn(8 * 4, reset_num_timesteps=False)
    state = model.kfac.state[block.weight]
    assert state["statistics_count"] == 1 + 4
    weight_after_one = 1 - 0.99**4  # the first statistics, folded with the decay of 4 steps
    assert state["statistics_weight"] == pytest.approx(1 - (1 - weight_after_one) * 0.5**4)


def test_settings_fixed_at_construction_are_refused_when_changed() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0)
    model.damping_mode = "factored"
    with pytest.raises(ValueError, match=r"damping_mode cannot change on a built model.*load it with damping_mode"):
        model.learn(8)
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0)
    model.vf_kl_clip = None
    with pytest.raises(ValueError, match=r"vf_kl_clip=None does not match the built optimizer's 2 trust region"):
        model.learn(8)
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0)
    model.stats_decay = 1.0
    with pytest.raises(ValueError, match="stats_decay"):
        model.learn(8)
