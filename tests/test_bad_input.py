"""Bad input is refused before any training starts, with a message naming the problem."""

import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import assert_no_numerical_trouble
from gymnasium import spaces
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.envs import IdentityEnv
from stable_baselines3.common.policies import BasePolicy

from sb3_acktr import ACKTR


class SpaceEnv(gym.Env):
    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        return self.observation_space.sample(), {}

    def step(self, action):  # type: ignore[override]
        return self.observation_space.sample(), 0.0, False, False, {}


BOX = spaces.Box(-1, 1, (3,), np.float32)


@pytest.mark.parametrize(
    "action_space",
    [spaces.Tuple([spaces.Discrete(2), spaces.Discrete(3)]), spaces.Text(5), spaces.Dict({"a": spaces.Discrete(2)})],
    ids=["tuple", "text", "dict"],
)
def test_unsupported_action_space(action_space: spaces.Space) -> None:
    with pytest.raises(AssertionError, match="only supports"):
        ACKTR("MlpPolicy", SpaceEnv(BOX, action_space))


@pytest.mark.parametrize(
    "observation_space",
    [
        spaces.Tuple([BOX, BOX]),
        spaces.Text(5),
        spaces.Graph(node_space=BOX, edge_space=None),
        spaces.Dict({"nested": spaces.Dict({"x": BOX})}),
    ],
    ids=["tuple", "text", "graph", "nested-dict"],
)
def test_unsupported_observation_space(observation_space: spaces.Space) -> None:
    with pytest.raises(ValueError, match=f"does not support {type(observation_space).__name__} observation"):
        ACKTR("MlpPolicy", SpaceEnv(observation_space, spaces.Discrete(2)))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(kl_clip=0.0), "kl_clip"),
        (dict(kl_clip=-1e-3), "kl_clip"),
        (dict(damping=0), "damping"),
        (dict(damping=float("nan")), "damping"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(stats_decay=1.5), "stats_decay"),
        (dict(damping_mode="eigen"), "damping_mode"),
        (dict(conv_mode="mean"), "conv_mode"),
        (dict(inverse_update_interval=0), "inverse_update_interval"),
        (dict(stats_update_interval="1"), "stats_update_interval"),
        (dict(vf_fisher_coef=-1.0), "vf_fisher_coef"),
        (dict(vf_kl_clip=0.0), "vf_kl_clip"),
        (dict(vf_kl_clip="0.001"), "vf_kl_clip"),
        (dict(kl_clip=lambda progress: 0.0), "kl_clip"),
        (dict(vf_kl_clip=lambda progress: "0.001"), "vf_kl_clip"),
        (dict(vf_coef=None), "vf_coef"),
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(policy_kwargs=dict(optimizer_class=object)), "optimizer_class"),
        (dict(device="mps"), "MPS"),
    ],
)
def test_invalid_hyperparameters_are_named(kwargs: dict, name: str) -> None:
    with pytest.raises((ValueError, TypeError), match=name):
        ACKTR("MlpPolicy", IdentityEnv(2), **kwargs)


class NotActorCritic(BasePolicy):
    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space, lr_schedule, **kwargs) -> None:
        super().__init__(observation_space, action_space)

    def _predict(self, observation, deterministic: bool = False):  # type: ignore[override]
        raise NotImplementedError


def test_policy_without_actor_critic_heads() -> None:
    with pytest.raises(TypeError, match="ActorCriticPolicy"):
        ACKTR(NotActorCritic, IdentityEnv(2))  # type: ignore[arg-type]


def test_parameters_added_after_the_model_was_built_are_refused() -> None:
    model = ACKTR("MlpPolicy", IdentityEnv(2), n_steps=4)
    model.policy.extra_head = th.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"not owned by its K-FAC optimizer.*extra_head.weight"):
        model.learn(8)
    assert model.num_timesteps == 0


@pytest.mark.parametrize("algorithm", [A2C, PPO])
def test_loading_a_model_saved_by_another_algorithm(tmp_path: Path, algorithm) -> None:
    algorithm("MlpPolicy", IdentityEnv(2)).save(tmp_path / "other")
    with pytest.raises(ValueError, match=r"not saved by the K-FAC optimizer.*another algorithm"):
        ACKTR.load(tmp_path / "other")


@pytest.mark.parametrize("kept", [0.5, 0.9, 0.99])
def test_loading_a_truncated_save_names_it(tmp_path: Path, kept: float) -> None:
    ACKTR("MlpPolicy", IdentityEnv(2), n_steps=4).save(tmp_path / "acktr")
    whole = (tmp_path / "acktr.zip").read_bytes()
    (tmp_path / "cut.zip").write_bytes(whole[: int(len(whole) * kept)])
    with pytest.raises(ValueError, match=r"cut\.zip is not a whole model save \(a zip file cut short or damaged"):
        ACKTR.load(tmp_path / "cut")


def test_loading_a_model_without_optimizer_state_warns_and_starts_the_statistics_anew(tmp_path: Path) -> None:
    model = ACKTR("MlpPolicy", IdentityEnv(2), n_steps=4)
    model.learn(8)
    model.save(tmp_path / "acktr")
    with zipfile.ZipFile(tmp_path / "acktr.zip") as saved, zipfile.ZipFile(tmp_path / "partial.zip", "w") as partial:
        for name in saved.namelist():
            if name != "policy.optimizer.pth":
                partial.writestr(name, saved.read(name))
    with pytest.warns(UserWarning, match="no K-FAC optimizer state"):
        loaded = ACKTR.load(tmp_path / "partial.zip", env=IdentityEnv(2))
    for original, restored in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.equal(original, restored)
    assert loaded.kfac.n_steps == 0 and not loaded.kfac._inverses
    loaded.learn(8)
    assert loaded.kfac.n_steps == 2


def test_set_parameters_with_exact_match_refuses_parameters_without_the_optimizer() -> None:
    """SB3's contract for set_parameters; load() keeps accepting a zip saved without the optimizer (above)."""
    model = ACKTR("MlpPolicy", IdentityEnv(2), n_steps=4)
    params = {name: value for name, value in model.get_parameters().items() if name != "policy.optimizer"}
    with pytest.raises(ValueError, match=r"policy\.optimizer"):
        model.set_parameters(params, exact_match=True)
    model.set_parameters(params, exact_match=False)  # the lenient path, as SB3's


def test_loading_parameters_of_another_network_names_the_policy_kwargs(tmp_path: Path) -> None:
    ACKTR("MlpPolicy", IdentityEnv(2), policy_kwargs=dict(net_arch=[8])).save(tmp_path / "small")
    model = ACKTR("MlpPolicy", IdentityEnv(2))
    # SB3's type and PyTorch's text (SB3's load retries on them), with the fix named
    with pytest.raises(RuntimeError, match=r"(?s)policy_kwargs .*Missing key\(s\) in state_dict"):
        model.set_parameters(tmp_path / "small")


@pytest.mark.parametrize("normalize_advantage", [False, True])
def test_one_example_per_update_trains(normalize_advantage: bool) -> None:
    """A2C's habit of n_steps=1 with one environment: rank-one factors, made invertible by the damping."""
    model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=1, normalize_advantage=normalize_advantage, seed=0)
    before = th.cat([p.detach().flatten() for p in model.policy.parameters()])
    model.learn(30)
    after = th.cat([p.detach().flatten() for p in model.policy.parameters()])
    assert th.isfinite(after).all() and not th.equal(before, after)
    assert_no_numerical_trouble(model.kfac)


@pytest.mark.parametrize("learning_rate", [7e-4, lambda progress: 3e-4 * progress])
def test_first_order_learning_rate_warns(learning_rate) -> None:
    with pytest.warns(UserWarning, match="looks like a rate for A2C or PPO"):
        ACKTR("MlpPolicy", "CartPole-v1", learning_rate=learning_rate)


def test_acktr_learning_rates_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ACKTR("MlpPolicy", "CartPole-v1", learning_rate=0.25)
        ACKTR("MlpPolicy", "CartPole-v1", learning_rate=0.0)
