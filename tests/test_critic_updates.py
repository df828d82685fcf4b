"""The critic's settings: its trust region and coefficient (``"auto"``), and further K-FAC steps (``n_critic_updates``)."""

import copy
import warnings

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.logger import Logger
from torch.nn import functional as F

from sb3_acktr import ACKTR
from sb3_acktr.acktr.acktr import critic_only_parameters, parameter_roles


def one_update(n_critic_updates: int, **kwargs) -> ACKTR:
    """A model after exactly one update on Pendulum (4 envs x 32 steps)."""
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0)
    model = ACKTR("MlpPolicy", env, n_steps=32, n_critic_updates=n_critic_updates, seed=0, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    model.learn(4 * 32, log_interval=10**9)
    return model


def rollout_value_loss(model: ACKTR) -> float:
    buffer = model.rollout_buffer
    assert isinstance(buffer.observations, np.ndarray)
    observations = th.as_tensor(buffer.observations.reshape(4 * 32, -1))
    with th.no_grad():
        values = model.policy.predict_values(observations).flatten()
    return F.mse_loss(th.as_tensor(buffer.returns.flatten()), values).item()


def test_further_critic_steps_fit_the_rollout_returns_better() -> None:
    """Pendulum's returns (about -1000) are far from the initial values: with a region as wide as the paper's critic's
    (0.3), 10 steps fit them far better than the update's one."""
    losses = {n: rollout_value_loss(one_update(n, vf_kl_clip=0.3)) for n in (1, 10)}
    assert losses[10] < 0.5 * losses[1]
    model = one_update(10, vf_kl_clip=0.3)
    assert model.logger.name_to_value["train/fitted_value_loss"] == pytest.approx(rollout_value_loss(model), rel=1e-5)
    assert model.logger.name_to_value["train/fitted_value_loss"] < model.logger.name_to_value["train/value_loss"]


def test_further_critic_steps_move_only_the_critic_and_keep_the_intervals() -> None:
    one, several = one_update(1, log_kl=True), one_update(5, log_kl=True)
    critic = {id(param) for param in critic_only_parameters(several.policy, several.observation_space)}
    moved = 0
    for (name, before), after in zip(one.policy.named_parameters(), several.policy.parameters(), strict=True):
        if id(after) in critic:
            moved += not th.equal(before, after)
        else:
            assert th.equal(before, after), name  # the actor's step is the update's first one, unchanged
    assert moved > 0
    assert several.kfac.n_steps == one.kfac.n_steps == 1 and several.kfac.inverse_age == one.kfac.inverse_age
    # The update's first step gives the logged diagnostics and the KL.
    for key in ("kfac/trust_region_scale", "kfac/value/trust_region_scale", "kfac/vg_sum", "train/kl"):
        assert several.logger.name_to_value[key] == one.logger.name_to_value[key], key


def test_further_critic_steps_are_bounded_by_the_critic_region() -> None:
    """A tiny vf_kl_clip keeps every further step tiny: the critic barely moves beyond the first step."""
    tight, loose = one_update(10, vf_kl_clip=1e-12), one_update(10, vf_kl_clip=1.0)
    reference = one_update(1, vf_kl_clip=1e-12)
    distance = {
        name: sum((p - q).norm().item() for p, q in zip(model.policy.parameters(), reference.policy.parameters(), strict=True))
        for name, model in (("tight", tight), ("loose", loose))
    }
    assert distance["tight"] < 1e-3 * distance["loose"]


@pytest.mark.parametrize("value", [0, -1, 2.0, True])
def test_bad_n_critic_updates_is_refused(value) -> None:
    with pytest.raises(ValueError, match="n_critic_updates must be an integer of at least 1"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_critic_updates=value)


def test_further_critic_steps_need_the_critic_region() -> None:
    with pytest.raises(ValueError, match="set vf_kl_clip"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_critic_updates=5, vf_kl_clip=None)


def test_saved_and_loaded_with_its_critic_updates(tmp_path) -> None:
    model = one_update(3)
    model.save(tmp_path / "model.zip")
    loaded = ACKTR.load(tmp_path / "model.zip", env=make_vec_env("Pendulum-v1", n_envs=4, seed=0))
    assert loaded.n_critic_updates == 3
    continued = copy.deepcopy(loaded)
    continued.set_logger(Logger(folder=None, output_formats=[]))
    continued.learn(4 * 32, reset_num_timesteps=False)
    assert continued.kfac.n_steps == 2  # the saved update, then one more with its critic steps
    buffer = continued.rollout_buffer
    before_update = float(np.mean((buffer.returns - buffer.values) ** 2))  # the values the rollout was collected with
    assert rollout_value_loss(continued) < before_update


@pytest.mark.parametrize("loaded_with", [dict(n_critic_updates=3), dict(n_critic_updates=3, vf_kl_clip=0.01)])
def test_critic_updates_loaded_onto_one_trust_region_are_refused(tmp_path, loaded_with) -> None:
    """A model saved with one region keeps it at load (see set_parameters), so it cannot take further critic steps."""
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0)
    ACKTR("MlpPolicy", env, n_steps=8, vf_kl_clip=None, seed=0).save(tmp_path / "model.zip")
    with pytest.raises(ValueError, match=r"n_critic_updates > 1 .* one trust region"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the saved layout's warning
        ACKTR.load(tmp_path / "model.zip", env=env, **loaded_with)


@pytest.mark.parametrize(
    "policy, kwargs, expected",
    [
        ("MlpPolicy", {}, (0.5, 0.001, 2)),
        ("CnnPolicy", {}, (0.25, None, 1)),
        ("CnnPolicy", dict(policy_kwargs=dict(share_features_extractor=False)), (0.5, 0.001, 2)),
        ("CnnPolicy", dict(n_critic_updates=3), (0.25, 0.001, 2)),
        ("CnnPolicy", dict(vf_coef=0.7, vf_kl_clip=0.01), (0.7, 0.01, 2)),
        ("MlpPolicy", dict(vf_coef=0.1, vf_kl_clip=None), (0.1, None, 1)),
    ],
)
def test_auto_critic_settings_follow_whether_actor_and_critic_share_parameters(policy, kwargs, expected) -> None:
    """One trust region and vf_coef 0.25 for a shared features extractor (unless the critic takes further steps)."""
    env = FakeImageEnv(screen_height=36, screen_width=36) if policy == "CnnPolicy" else "CartPole-v1"
    model = ACKTR(policy, env, n_steps=4, **kwargs)
    assert (model.vf_coef, model.vf_kl_clip, len(model.kfac.param_groups)) == expected


def test_shared_parameters_are_those_of_the_shared_features_extractor() -> None:
    model = ACKTR("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=4)
    roles = parameter_roles(model.policy, model.observation_space)
    shared = {param for param, (actor, critic) in roles.items() if actor and critic}
    assert shared == set(model.policy.features_extractor.parameters())
    assert set(critic_only_parameters(model.policy, model.observation_space)) == {
        *model.policy.mlp_extractor.value_net.parameters(),
        *model.policy.value_net.parameters(),
    }


def test_auto_critic_settings_are_saved_as_resolved(tmp_path) -> None:
    env = FakeImageEnv(screen_height=36, screen_width=36)
    ACKTR("CnnPolicy", env, n_steps=4).save(tmp_path / "model.zip")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the saved layout matches: no warning about trust regions
        loaded = ACKTR.load(tmp_path / "model.zip", env=env)
    assert (loaded.vf_coef, loaded.vf_kl_clip, len(loaded.kfac.param_groups)) == (0.25, None, 1)
