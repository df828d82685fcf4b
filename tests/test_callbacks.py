"""SB3 callbacks and train/eval mode work with ACKTR like with any on-policy algorithm."""

from pathlib import Path

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import (
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnMaxEpisodes,
    StopTrainingOnNoModelImprovement,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from sb3_acktr import ACKTR


def test_callbacks(tmp_path: Path) -> None:
    model = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), n_steps=8, seed=0)
    eval_callback = EvalCallback(
        make_vec_env("CartPole-v1", n_envs=1, seed=1),
        eval_freq=40,
        n_eval_episodes=2,
        best_model_save_path=str(tmp_path),
        log_path=str(tmp_path),
        callback_after_eval=StopTrainingOnNoModelImprovement(max_no_improvement_evals=100),
    )
    checkpoint = CheckpointCallback(save_freq=50, save_path=str(tmp_path / "checkpoints"), name_prefix="acktr")
    model.learn(400, callback=CallbackList([eval_callback, checkpoint]))
    assert (tmp_path / "best_model.zip").is_file()
    assert len(np.load(tmp_path / "evaluations.npz")["timesteps"]) == 5
    checkpoints = sorted((tmp_path / "checkpoints").glob("acktr_*_steps.zip"))
    assert len(checkpoints) == 4
    loaded = ACKTR.load(checkpoints[-1])
    assert 0 < loaded.num_timesteps < model.num_timesteps and loaded.kfac.n_steps == loaded.num_timesteps // 16


def test_stop_on_max_episodes() -> None:
    model = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), n_steps=8, seed=0)
    model.learn(100_000, callback=StopTrainingOnMaxEpisodes(max_episodes=3))
    assert model.num_timesteps < 2_000


class NormalisedDropoutExtractor(BaseFeaturesExtractor):
    """BatchNorm (uncovered by K-FAC) and dropout: both behave differently in train and eval mode."""

    def __init__(self, observation_space: spaces.Box) -> None:
        super().__init__(observation_space, features_dim=8)
        self.net = th.nn.Sequential(
            th.nn.Linear(observation_space.shape[0], 8), th.nn.BatchNorm1d(8), th.nn.Dropout(0.2), th.nn.ReLU()
        )

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.net(observations)


def test_train_and_eval_mode() -> None:
    model = ACKTR(
        "MlpPolicy",
        make_vec_env("CartPole-v1", n_envs=2, seed=0),
        n_steps=8,
        policy_kwargs=dict(features_extractor_class=NormalisedDropoutExtractor),
        seed=0,
    )
    batch_norm = model.policy.features_extractor.get_submodule("net.1")
    assert isinstance(batch_norm, th.nn.BatchNorm1d) and batch_norm.running_mean is not None
    assert "features_extractor.net.1.weight" in model.kfac.uncovered_parameters

    running_mean = batch_norm.running_mean.clone()
    model.predict(np.zeros((2, 4), dtype=np.float32))  # eval mode: running statistics untouched
    assert th.equal(batch_norm.running_mean, running_mean)

    modes = []
    original_train = model.train

    def recording_train() -> None:
        modes.append(model.policy.training)  # collect_rollouts leaves the policy in eval mode
        original_train()
        modes.append(model.policy.training)

    model.train = recording_train  # type: ignore[method-assign]
    model.learn(32)
    assert modes == [False, True, False, True]
    assert not th.equal(batch_norm.running_mean, running_mean)  # updated in train()

    observations = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    actions = [model.predict(observations, deterministic=True)[0] for _ in range(3)]
    assert all(np.array_equal(actions[0], other) for other in actions[1:])  # dropout off when acting
