"""Faults tried on purpose: numerical trouble is survived and counted, hopeless runs stop with an explanation."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium.wrappers import TransformObservation, TransformReward
from hypothesis import given, settings
from hypothesis import strategies as st
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecCheckNan
from torch import nn

from sb3_acktr import ACKTR, KFAC


def parameters_finite(model: ACKTR) -> bool:
    return all(bool(th.isfinite(p).all()) for p in model.policy.parameters())


def quiet(model: ACKTR) -> ACKTR:
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


class FaultyReward(gym.Wrapper):
    """Returns ``value`` as the reward at the given steps (counted from creation), the true reward otherwise."""

    def __init__(self, env: gym.Env, value: float, at_steps: set[int] | None = None) -> None:
        super().__init__(env)
        self.value, self.at_steps, self.n_steps = value, at_steps, 0

    def step(self, action):  # type: ignore[override]
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.n_steps += 1
        if self.at_steps is None or self.n_steps in self.at_steps:
            reward = self.value
        return observation, reward, terminated, truncated, info


class FaultyObservation(gym.ObservationWrapper):
    """Puts NaN into the observation from step ``from_step`` on."""

    def __init__(self, env: gym.Env, from_step: int) -> None:
        super().__init__(env)
        self.from_step, self.n_steps = from_step, 0

    def step(self, action):  # type: ignore[override]
        self.n_steps += 1
        return super().step(action)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        if self.n_steps >= self.from_step:
            observation = observation.copy()
            observation[0] = np.nan
        return observation


def cartpole(*wrappers, n_envs: int = 4) -> DummyVecEnv:
    def make() -> gym.Env:
        env = gym.make("CartPole-v1")
        for wrapper in wrappers:
            env = wrapper(env)
        return env

    return DummyVecEnv([make] * n_envs)


# ---------------------------------------------------------------- numerical faults survived


def huge_and_constant_features(env: gym.Env) -> gym.Env:
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box)
    low = np.concatenate([space.low, [-np.inf, 0.0]]).astype(np.float32)
    high = np.concatenate([space.high, [np.inf, 0.0]]).astype(np.float32)
    return TransformObservation(
        env,
        lambda obs: np.concatenate([obs, [1e6 * obs[0], 0.0]]).astype(np.float32),
        gym.spaces.Box(low, high, dtype=np.float32),
    )


@pytest.mark.parametrize("damping_mode", ["exact", "factored"])
@pytest.mark.parametrize(
    "case",
    ["rewards_x1e6", "huge_and_constant_features", "damping_1e-8", "learning_rate_x100", "dead_relus"],
)
def test_numerical_faults_are_survived(case: str, damping_mode: str) -> None:
    kwargs: dict = dict(n_steps=16, seed=0, damping_mode=damping_mode, inverse_update_interval=1)
    wrappers: list = []
    if case == "rewards_x1e6":
        wrappers.append(lambda env: TransformReward(env, lambda reward: 1e6 * float(reward)))
    elif case == "huge_and_constant_features":
        wrappers.append(huge_and_constant_features)
    elif case == "damping_1e-8":
        kwargs["damping"] = 1e-8
    elif case == "learning_rate_x100":
        kwargs["learning_rate"] = 25.0
    elif case == "dead_relus":
        kwargs["policy_kwargs"] = dict(activation_fn=nn.ReLU)
    model = quiet(ACKTR("MlpPolicy", cartpole(*wrappers), **kwargs))
    if case == "dead_relus":
        for module in model.policy.mlp_extractor.modules():
            if isinstance(module, nn.Linear):
                module.bias.data.fill_(-100.0)  # every hidden unit is dead: singular factors downstream
    actor_head = [param.detach().clone() for param in model.policy.action_net.parameters()]
    model.learn(16 * 4 * 20)
    assert parameters_finite(model)
    assert model.kfac.counters["inverse_failures"] == 0
    assert model.kfac.counters["skipped_steps"] == 0
    assert model.kfac.counters["nonfinite_statistics"] == 0
    moved = [not th.equal(now, then) for now, then in zip(model.policy.action_net.parameters(), actor_head, strict=True)]
    assert any(moved)  # the policy moved (with dead units, its head's bias alone)
    values = model.logger.name_to_value
    assert 0 < values["kfac/trust_region_scale"] <= 1


def test_a_nan_reward_skips_one_update_and_training_goes_on() -> None:
    model = quiet(ACKTR("MlpPolicy", cartpole(lambda env: FaultyReward(env, math.nan, {30}), n_envs=1), n_steps=16, seed=0))
    model.learn(16 * 10)
    assert model.kfac.counters["skipped_steps"] == 1
    assert model.logger.name_to_value["kfac/skipped_steps"] == 1
    assert model.kfac.consecutive_skipped_steps == 0  # later updates were taken
    assert parameters_finite(model)


def test_a_nan_reward_skips_one_update_with_critic_steps() -> None:
    """The critic's further steps on a non-finite batch are skipped too, but only the update counts toward the stop."""
    env = cartpole(lambda env: FaultyReward(env, math.nan, {30}), n_envs=1)
    model = quiet(ACKTR("MlpPolicy", env, n_steps=16, vf_kl_clip=0.01, n_critic_updates=10, seed=0))
    model.learn(16 * 10)
    assert model.kfac.counters["skipped_steps"] == 10  # the update's step and its nine further critic steps
    assert model.kfac.consecutive_skipped_steps == 0
    assert parameters_finite(model)


def test_rewards_that_stay_non_finite_stop_training_after_ten_updates_with_critic_steps() -> None:
    model = quiet(
        ACKTR(
            "MlpPolicy",
            cartpole(lambda env: FaultyReward(env, math.nan)),
            n_steps=8,
            vf_kl_clip=0.01,
            n_critic_updates=10,
            seed=0,
        )
    )
    with pytest.raises(RuntimeError, match=r"skipped the last 10 updates"):
        model.learn(8 * 4 * 50)
    assert model.kfac.counters["skipped_steps"] == 9 * 10 + 1  # the tenth update stops before its critic steps
    assert parameters_finite(model)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_rewards_that_stay_non_finite_stop_training_with_an_explanation(value: float) -> None:
    model = quiet(ACKTR("MlpPolicy", cartpole(lambda env: FaultyReward(env, value)), n_steps=8, seed=0))
    with pytest.raises(RuntimeError, match=r"skipped the last 10 updates.*VecCheckNan"):
        model.learn(8 * 4 * 50)
    assert parameters_finite(model)
    assert model.kfac.counters["skipped_steps"] == 10


def test_non_finite_observation_stops_with_an_explanation() -> None:
    model = quiet(ACKTR("MlpPolicy", cartpole(lambda env: FaultyObservation(env, 20)), n_steps=8, seed=0))
    with pytest.raises(ValueError, match="non-finite observation"):
        model.learn(8 * 4 * 10)
    assert parameters_finite(model)


@pytest.mark.parametrize(
    "wrapper",
    [lambda env: FaultyReward(env, math.nan, {5}), lambda env: FaultyObservation(env, 5)],
    ids=["reward", "observation"],
)
def test_vec_check_nan_reports_the_source(wrapper) -> None:
    model = quiet(ACKTR("MlpPolicy", VecCheckNan(cartpole(wrapper), raise_exception=True), n_steps=8, seed=0))
    with pytest.raises(ValueError, match="nan"):
        model.learn(8 * 4 * 4)
    assert parameters_finite(model)


# ---------------------------------------------------------------- long runs


@pytest.mark.parametrize("env_id, n_envs", [("CartPole-v1", 8), ("Acrobot-v1", 16)])
def test_twenty_seeded_runs_without_numerical_events(env_id: str, n_envs: int) -> None:
    for seed in range(20):
        model = quiet(ACKTR("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), ent_coef=0.0, seed=seed))
        model.learn(10_000)
        assert parameters_finite(model), seed
        events = {name: count for name, count in model.kfac.counters.items() if count}
        assert not events, (seed, events)


@st.composite
def networks(draw: st.DrawFn) -> tuple[nn.Module, tuple[int, ...], int]:
    """A random stack of Conv2d layers (or none) followed by Linear layers, its input shape and output size."""
    channels, size = draw(st.integers(1, 3)), draw(st.integers(4, 9))
    layers: list[nn.Module] = []
    shape: tuple[int, ...] = (channels, size, size)
    for _ in range(draw(st.integers(0, 2))):
        kernel = draw(st.integers(1, min(3, shape[1])))
        stride, padding = draw(st.integers(1, 2)), draw(st.integers(0, 1))
        out_channels = draw(st.integers(1, 4))
        layers += [nn.Conv2d(shape[0], out_channels, kernel, stride, padding, bias=draw(st.booleans())), nn.ReLU()]
        out_size = (shape[1] + 2 * padding - kernel) // stride + 1
        shape = (out_channels, out_size, out_size)
    layers.append(nn.Flatten())
    features = int(np.prod(shape))
    for _ in range(draw(st.integers(0, 2))):
        hidden = draw(st.integers(1, 8))
        layers += [nn.Linear(features, hidden, bias=draw(st.booleans())), nn.Tanh()]
        features = hidden
    n_outputs = draw(st.integers(2, 5))
    layers.append(nn.Linear(features, n_outputs))
    return nn.Sequential(*layers), (channels, size, size), n_outputs


@settings(max_examples=40, deadline=None)
@given(
    network=networks(),
    batch_size=st.integers(2, 12),
    damping=st.floats(1e-8, 1.0),
    damping_mode=st.sampled_from(["exact", "factored"]),
    conv_mode=st.sampled_from(["expand", "reduce"]),
    lr=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**16),
)
def test_random_networks_take_finite_trust_region_steps(
    network: tuple[nn.Module, tuple[int, ...], int],
    batch_size: int,
    damping: float,
    damping_mode: str,
    conv_mode: str,
    lr: float,
    seed: int,
) -> None:
    th.manual_seed(seed)
    model, input_shape, n_outputs = network
    optimizer = KFAC(model, lr=lr, momentum=0.0, damping=damping, damping_mode=damping_mode, conv_mode=conv_mode)  # type: ignore[arg-type]
    inputs = th.randn(batch_size, *input_shape)
    targets = th.randint(0, n_outputs, (batch_size,))
    for _ in range(2):
        before = [p.detach().clone() for p in model.parameters()]
        with optimizer.capture_statistics():
            logits = model(inputs)
        distribution = th.distributions.Categorical(logits=logits)
        optimizer.update_statistics(-distribution.log_prob(distribution.sample()).sum())
        optimizer.zero_grad()
        nn.functional.cross_entropy(logits, targets).backward()
        optimizer.step()
        diagnostics = optimizer.diagnostics()
        assert all(bool(th.isfinite(p).all()) for p in model.parameters())
        assert diagnostics["vg_sum"] >= 0  # a damped Fisher is positive definite: V is a descent direction
        scale = diagnostics["trust_region_scale"]
        assert 0 < scale <= 1
        step_sq = lr**2 * scale**2 * diagnostics["vg_sum"]
        assert step_sq <= 0.001 * (1 + 1e-4)
        if scale < 1:
            assert step_sq == pytest.approx(0.001, rel=1e-4)
        moved = any(not th.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
        assert moved or diagnostics["vg_sum"] == 0
    assert optimizer.counters["skipped_steps"] == 0
