"""ACKTR learns: SB3's identity environments and CartPole-v1 within fixed budgets."""

import gymnasium as gym
import pytest
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvBox, IdentityEnvMultiBinary, IdentityEnvMultiDiscrete
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from sb3_acktr import ACKTR

DIM = 4


@pytest.mark.parametrize("env", [IdentityEnv(DIM), IdentityEnvMultiDiscrete(DIM), IdentityEnvMultiBinary(DIM)])
def test_discrete_identity(env: gym.Env) -> None:
    vec_env = DummyVecEnv([lambda: env])
    model = ACKTR("MlpPolicy", vec_env, gamma=0.4, seed=3).learn(10_000)
    evaluate_policy(model, vec_env, n_eval_episodes=20, reward_threshold=90, warn=False)


def timesteps_to_reach(model: ACKTR, eval_env: gym.Env | VecEnv, threshold: float, budget: int, eval_every: int) -> int | None:
    """Train until the mean deterministic evaluation return (10 episodes every ``eval_every`` steps) reaches ``threshold``."""
    eval_callback = EvalCallback(
        eval_env,
        callback_on_new_best=StopTrainingOnRewardThreshold(reward_threshold=threshold),
        eval_freq=max(eval_every // model.n_envs, 1),
        n_eval_episodes=10,
        verbose=0,
    )
    model.learn(budget, callback=eval_callback)
    return model.num_timesteps if eval_callback.best_mean_reward >= threshold else None


def test_continuous_identity() -> None:
    # The threshold is reached within 2k-4k steps on seeds 0-5, but the final policy of a run can oscillate:
    # measure when it is first reached (n_steps=5 as A2C's default: 20 gives too few updates in this budget).
    model = ACKTR("MlpPolicy", IdentityEnvBox(eps=0.5), n_steps=5, gamma=0.95, policy_kwargs=dict(net_arch=[64, 64]), seed=0)
    reached = timesteps_to_reach(model, Monitor(IdentityEnvBox(eps=0.5)), 90, budget=10_000, eval_every=1_000)
    assert reached is not None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cartpole_reaches_475_within_150k_timesteps(seed: int) -> None:
    # The library defaults with 8 envs and no entropy bonus (the SB2 zoo's settings; not the CartPole-v1 section):
    # the first evaluation at or above 475 counts (seed 2 at 110k with gymnasium 1.4, seeds 3 and 4 at 30k and 45k).
    model = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), ent_coef=0.0, seed=seed)
    reached = timesteps_to_reach(model, make_vec_env("CartPole-v1", n_envs=1, seed=1000 + seed), 475, 150_000, 5_000)
    assert reached is not None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 4])
def test_cartpole_more_seeds(seed: int) -> None:
    model = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), ent_coef=0.0, seed=seed)
    reached = timesteps_to_reach(model, make_vec_env("CartPole-v1", n_envs=1, seed=1000 + seed), 475, 150_000, 5_000)
    assert reached is not None


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_acrobot_reaches_minus_100_within_300k_timesteps(seed: int) -> None:
    # The library defaults with the Acrobot-v1 section's environments (16, normalised observations and rewards) and no
    # entropy bonus, not its critic steps: the first evaluation at or above -100 counts.
    env = VecNormalize(make_vec_env("Acrobot-v1", n_envs=16, seed=seed))
    eval_env = VecNormalize(make_vec_env("Acrobot-v1", n_envs=1, seed=1000 + seed), training=False, norm_reward=False)
    model = ACKTR("MlpPolicy", env, ent_coef=0.0, seed=seed)
    assert timesteps_to_reach(model, eval_env, -100, 300_000, 10_000) is not None


@pytest.mark.slow
def test_cartpole_section_ends_with_a_policy_at_500() -> None:
    """The CartPole-v1 section (the critic fitted with two further steps per update) keeps its policy to the end."""
    seed = 1
    model = ACKTR(
        "MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=seed), learning_rate=lambda p: 0.25 * p,
        kl_clip=lambda p: 0.003 * p, vf_kl_clip=0.03, n_critic_updates=3, n_steps=10, momentum=0.5, ent_coef=0.0,
        stats_decay=0.9975, seed=seed,
    )  # fmt: skip
    model.learn(100_000)
    mean_return, _ = evaluate_policy(model, make_vec_env("CartPole-v1", n_envs=1, seed=1000 + seed), n_eval_episodes=20)
    assert isinstance(mean_return, float) and mean_return >= 475


@pytest.mark.slow
def test_defaults_learn_inverted_double_pendulum() -> None:
    """
    The library defaults on a task without a section (the unseen-task panel's protocol): 8 environments, VecNormalize,
    150k timesteps, the final policy over 10 episodes. Statistics every 4 updates at the same decay ended near 1,000.
    """
    seed = 0
    env = VecNormalize(make_vec_env("InvertedDoublePendulum-v5", n_envs=8, seed=seed))
    model = ACKTR("MlpPolicy", env, seed=seed).learn(150_000)
    eval_env = VecNormalize(
        make_vec_env("InvertedDoublePendulum-v5", n_envs=1, seed=1000 + seed), training=False, norm_reward=False
    )
    eval_env.obs_rms = env.obs_rms
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10)
    assert isinstance(mean_return, float) and mean_return >= 4_000
