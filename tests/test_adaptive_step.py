"""The paper's adaptive step: the learning rate follows the KL of each update toward ``target_kl``."""

import numpy as np
import pytest
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import Logger

from sb3_acktr import ACKTR
from sb3_acktr.acktr.acktr import STEP_SIZE_ADAPTATION, STEP_SIZE_FACTOR_BOUNDS, VALUE_REGION

ENV_ID = "Pendulum-v1"


class UpdateRecorder(BaseCallback):
    """The KL of every update and the step-size factor it left (read at the start of the next rollout)."""

    def __init__(self) -> None:
        super().__init__()
        self.kls: list[float] = []
        self.factors: list[float] = []

    def _on_rollout_start(self) -> None:
        values = self.logger.name_to_value
        if "train/kl" in values:
            self.kls.append(values["train/kl"])
            assert isinstance(self.model, ACKTR)
            self.factors.append(self.model.step_size_factor)  # after the update's adaptation

    def _on_step(self) -> bool:
        return True


def small_model(**kwargs) -> ACKTR:
    model = ACKTR("MlpPolicy", make_vec_env(ENV_ID, n_envs=4, seed=0), n_steps=32, ent_coef=0.0, seed=0, **kwargs)
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def learn_and_record(model: ACKTR, updates: int) -> UpdateRecorder:
    recorder = UpdateRecorder()
    model.learn(model.n_envs * model.n_steps * (updates + 1), callback=recorder, log_interval=10**9)
    return recorder


@pytest.mark.parametrize(
    "kl, expected",
    [
        (0.0, STEP_SIZE_ADAPTATION),
        (0.0009, STEP_SIZE_ADAPTATION),
        (0.001, 1.0),
        (0.004, 1.0),
        (0.0041, 1 / STEP_SIZE_ADAPTATION),
    ],
)
def test_rule_multiplies_divides_or_keeps_the_factor(kl: float, expected: float) -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", target_kl=0.002, seed=0)
    model._adapt_step_size(kl)
    assert model.step_size_factor == pytest.approx(expected)


def test_factor_stays_within_its_bounds() -> None:
    model = ACKTR("MlpPolicy", "CartPole-v1", target_kl=0.002, seed=0)
    for _ in range(100):
        model._adapt_step_size(0.0)
    assert model.step_size_factor == STEP_SIZE_FACTOR_BOUNDS[1]
    for _ in range(100):
        model._adapt_step_size(1.0)
    assert model.step_size_factor == STEP_SIZE_FACTOR_BOUNDS[0]


@pytest.mark.filterwarnings("ignore:learning_rate=0.001 looks like a rate for A2C")
def test_one_update_with_the_next_factor_moves_its_kl_by_the_rule() -> None:
    """Same model, same rollout, momentum off, no trust region: the KL of one small step grows as its size squared."""
    settings = dict(momentum=0.0, kl_clip=10.0, vf_kl_clip=None, learning_rate=0.001, target_kl=1.0)
    kls = []
    for factor in (1.0, 1 / STEP_SIZE_ADAPTATION):
        model = small_model(**settings)
        model.step_size_factor = factor
        kls.append(learn_and_record(model, 1).kls[0])
    assert kls[1] / kls[0] == pytest.approx(1 / STEP_SIZE_ADAPTATION**2, rel=0.05)


@pytest.mark.parametrize("first_kl_over_target", [30.0, 1 / 30])
def test_kl_of_the_updates_moves_toward_the_target(first_kl_over_target: float) -> None:
    """Momentum off and a trust region that never binds: the KL per update follows the factor the rule sets."""
    settings = dict(momentum=0.0, kl_clip=10.0, vf_kl_clip=None, learning_rate=0.05)
    first_kl = learn_and_record(small_model(log_kl=True, **settings), 1).kls[0]
    target_kl = first_kl / first_kl_over_target
    recorder = learn_and_record(small_model(target_kl=target_kl, **settings), 30)
    assert recorder.kls[0] == pytest.approx(first_kl, rel=1e-6)  # same start: no adaptation before the first update
    late_kl = float(np.median(recorder.kls[-10:]))
    if first_kl_over_target > 1:
        assert recorder.factors[0] == pytest.approx(1 / STEP_SIZE_ADAPTATION) and min(recorder.factors) < 0.1
        assert late_kl < first_kl / 3
    else:
        assert recorder.factors[0] == pytest.approx(STEP_SIZE_ADAPTATION)
        assert late_kl > first_kl * 3


def test_critic_region_keeps_the_scheduled_learning_rate() -> None:
    model = small_model(target_kl=1e-12, learning_rate=0.2)
    learn_and_record(model, 3)
    groups = {group["name"]: group["lr"] for group in model.kfac.param_groups}
    assert model.step_size_factor < 1
    assert groups[VALUE_REGION] == pytest.approx(0.2)
    # The last update used the factor before its own adaptation (a division: every KL is above the target).
    assert groups[""] == pytest.approx(0.2 * model.step_size_factor * STEP_SIZE_ADAPTATION)


def test_factor_is_saved_and_loaded(tmp_path) -> None:
    model = small_model(target_kl=1e-12)
    learn_and_record(model, 3)
    model.save(tmp_path / "model.zip")
    loaded = ACKTR.load(tmp_path / "model.zip")
    assert loaded.target_kl == 1e-12
    assert loaded.step_size_factor == model.step_size_factor < 1


def test_without_target_the_learning_rate_follows_its_schedule() -> None:
    model = small_model(learning_rate=0.2, log_kl=True)
    learn_and_record(model, 3)
    assert model.step_size_factor == 1.0
    assert all(group["lr"] == pytest.approx(0.2) for group in model.kfac.param_groups)
