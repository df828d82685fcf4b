"""Save/load restores the K-FAC state exactly; seeded runs are reproducible."""

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch as th
from conftest import assert_no_numerical_trouble
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_acktr import ACKTR
from sb3_acktr.acktr.acktr import FORMER_CNN_NET_ARCH
from sb3_acktr.kfac import compute_inverse
from sb3_acktr.kfac.optimizer import AVERAGE_KEYS


def parameters_vector(model: ACKTR) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])


def make_model(**kwargs) -> ACKTR:
    model = ACKTR("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), n_steps=16, seed=0, **kwargs)
    model.set_logger(Logger(None, []))
    return model


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(inverse_update_interval=3),
        dict(damping_mode="factored", stats_update_interval=2),
        dict(use_sde=True),
        dict(vf_kl_clip=None),
        dict(stats_batch_size=8),
    ],
)
def test_next_update_after_load_is_bit_identical(tmp_path: Path, kwargs: dict) -> None:
    model = make_model(**kwargs)
    model.learn(16 * 2 * 4, log_interval=10**9)
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(tmp_path / "acktr", env=make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    loaded.set_logger(Logger(None, []))
    assert th.equal(parameters_vector(loaded), parameters_vector(model))
    assert loaded.kfac.n_steps == model.kfac.n_steps == 4
    assert loaded.kfac.statistics_due()  # the checked update takes statistics (a subset's, gSDE's samples)

    # Same batch, same random state (batch order, Fisher samples): the same update.
    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    for algorithm in (model, loaded):
        set_random_seed(123)
        algorithm.train()
    assert th.equal(parameters_vector(loaded), parameters_vector(model))
    assert not loaded.kfac.counters["skipped_steps"]


def test_model_saved_again_before_training_keeps_its_inverses(tmp_path: Path) -> None:
    """Loading does not compute the inverses; a save before the next update keeps what they are recomputed from."""
    model = make_model(inverse_update_interval=3)
    model.learn(16 * 2 * 4, log_interval=10**9)
    model.save(tmp_path / "first")
    env = make_vec_env("Pendulum-v1", n_envs=2, seed=0)
    ACKTR.load(tmp_path / "first", env=env).save(tmp_path / "second")
    loaded = ACKTR.load(tmp_path / "second", env=env)
    assert not loaded.kfac._inverses
    loaded.set_logger(Logger(None, []))
    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    for algorithm in (model, loaded):
        set_random_seed(123)
        algorithm.train()
    assert th.equal(parameters_vector(loaded), parameters_vector(model))
    assert loaded.kfac.counters == model.kfac.counters


@pytest.mark.parametrize(
    "saved_vf_kl_clip, requested, expected",
    [(None, 0.001, None), (0.002, None, 0.002), (lambda progress: 0.002 * progress, None, 0.001)],
    ids=["one-region", "two-regions", "two-regions-schedule-ended"],
)
def test_saved_trust_region_layout_wins_on_load(tmp_path: Path, saved_vf_kl_clip, requested, expected) -> None:
    """A model saved with one trust region (e.g. before vf_kl_clip existed) loads with one, and vice versa."""
    model = make_model(vf_kl_clip=saved_vf_kl_clip)
    model.learn(16 * 2 * 2, log_interval=10**9)
    model.save(tmp_path / "acktr")
    with pytest.warns(UserWarning, match="trust region"):
        loaded = ACKTR.load(tmp_path / "acktr", env=make_vec_env("Pendulum-v1", n_envs=2, seed=0), vf_kl_clip=requested)
    assert loaded.vf_kl_clip == expected
    assert len(loaded.kfac.param_groups) == len(model.kfac.param_groups)
    assert loaded.kfac.n_steps == 2 and th.equal(parameters_vector(loaded), parameters_vector(model))
    loaded.set_logger(Logger(None, []))
    loaded.learn(16 * 2, reset_num_timesteps=False)
    assert loaded.kfac.n_steps == 3 and not loaded.kfac.counters["skipped_steps"]


def test_hyperparameters_given_at_load_apply(tmp_path: Path) -> None:
    """The saved optimizer state carries the old bounds, momentum and damping: those given to load win."""
    model = make_model()
    model.learn(16 * 2, log_interval=10**9)
    model.save(tmp_path / "acktr")
    changed: dict[str, Any] = dict(kl_clip=0.01, vf_kl_clip=0.05, momentum=0.5, damping=0.1)
    loaded = ACKTR.load(tmp_path / "acktr", env=make_vec_env("Pendulum-v1", n_envs=2, seed=0), **changed)
    loaded.set_logger(Logger(None, []))
    loaded.learn(16 * 2, reset_num_timesteps=False)
    applied = [(group["kl_clip"], group["momentum"], group["damping"]) for group in loaded.kfac.param_groups]
    assert applied == [(0.01, 0.5, 0.1), (0.05, 0.5, 0.1)]
    assert loaded.kfac.diagnostics()["damping"] == 0.1


def test_trust_region_schedules_survive_save_and_load(tmp_path: Path) -> None:
    """Decaying bounds reach 0 on the last update (no error); the finished model loads and trains on."""
    model = make_model(kl_clip=lambda progress: 0.002 * progress, vf_kl_clip=lambda progress: 0.004 * progress)
    model.learn(16 * 2 * 4, log_interval=10**9)
    assert [group["kl_clip"] for group in model.kfac.param_groups] == [0.0, 0.0]
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(tmp_path / "acktr", env=make_vec_env("Pendulum-v1", n_envs=2, seed=0))
    loaded.set_logger(Logger(None, []))
    loaded.learn(16 * 2 * 4)
    assert callable(loaded.kl_clip) and loaded.kl_clip(0.5) == pytest.approx(0.001) and loaded.kfac.n_steps == 8
    assert not loaded.kfac.counters["skipped_steps"]


def test_continue_training_after_load(tmp_path: Path) -> None:
    model = make_model()
    model.learn(64, log_interval=10**9)
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(tmp_path / "acktr", env=make_vec_env("Pendulum-v1", n_envs=2, seed=1))
    loaded.learn(64, reset_num_timesteps=False)
    assert loaded.num_timesteps == 128
    assert loaded.kfac.n_steps == 4


def test_load_with_zero_learning_rate_does_not_move(tmp_path: Path) -> None:
    """rl-zoo3's enjoy and record_video load with ``learning_rate: 0.0``."""
    model = make_model()
    model.learn(64, log_interval=10**9)
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(
        tmp_path / "acktr",
        env=make_vec_env("Pendulum-v1", n_envs=2, seed=1),
        custom_objects={"learning_rate": 0.0, "lr_schedule": lambda _: 0.0},
    )
    before = parameters_vector(loaded)
    loaded.learn(64)
    assert th.equal(parameters_vector(loaded), before)


def test_cnn_save_load_keeps_factors(tmp_path: Path) -> None:
    model = ACKTR("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=4, seed=0)
    model.set_logger(Logger(None, []))
    model.learn(12)
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(tmp_path / "acktr")
    for block, loaded_block in zip(model.kfac.blocks, loaded.kfac.blocks, strict=True):
        original, restored = model.kfac.factors(block), loaded.kfac.factors(loaded_block)
        assert original is not None and restored is not None
        assert th.equal(original[0], restored[0]) and th.equal(original[1], restored[1])


def test_cnn_policy_saved_with_its_former_heads_loads_as_trained(tmp_path: Path) -> None:
    """A CnnPolicy saved when its default network put SB3's 64-64 layers after the extractor loads with them."""
    model = ACKTR(
        "CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=4, seed=0,
        policy_kwargs=dict(net_arch=FORMER_CNN_NET_ARCH),
    )  # fmt: skip
    model.set_logger(Logger(None, []))
    model.learn(8)
    model.policy_kwargs = {}  # what such a zip holds: no net_arch
    model.save(tmp_path / "former")
    loaded = ACKTR.load(tmp_path / "former")
    assert loaded.policy_kwargs["net_arch"] == FORMER_CNN_NET_ARCH
    assert th.equal(parameters_vector(loaded), parameters_vector(model))
    # A zip of the current default (no heads) loads with it.
    current = ACKTR("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=4, seed=0)
    current.save(tmp_path / "current")
    assert "net_arch" not in ACKTR.load(tmp_path / "current").policy_kwargs


def test_same_seed_same_parameters() -> None:
    vectors = []
    for _ in range(2):
        model = ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=3)
        model.set_logger(Logger(None, []))
        model.learn(8 * 12)
        vectors.append(parameters_vector(model))
    assert th.equal(vectors[0], vectors[1])


class EnvSnapshots(BaseCallback):
    """Keeps a copy of the training environment at the start of every rollout (the test's 'environment state')."""

    def __init__(self) -> None:
        super().__init__()
        self.snapshots: dict[int, VecEnv] = {}
        self.inner: dict[int, VecEnv] = {}  # the environments inside a VecNormalize, which its copy leaves out

    def _on_rollout_start(self) -> None:
        env = self.model.get_env()
        assert env is not None
        self.snapshots[self.model.num_timesteps] = copy.deepcopy(env)
        if isinstance(env, VecNormalize):
            self.inner[self.model.num_timesteps] = copy.deepcopy(env.venv)

    def _on_step(self) -> bool:
        return True


class StopAfter(BaseCallback):
    """Simulates a crash: stops training after ``n_calls`` environment steps."""

    def __init__(self, n_calls: int) -> None:
        super().__init__()
        self.limit = n_calls

    def _on_step(self) -> bool:
        return self.n_calls < self.limit


@pytest.mark.parametrize(
    "env_id, kwargs",
    [
        ("CartPole-v1", {}),
        ("CartPole-v1", dict(stats_batch_size=5)),
        ("Pendulum-v1", dict(use_sde=True, learning_rate=lambda p: 0.25 * p)),
    ],
)
def test_checkpoint_resume_matches_uninterrupted_run(tmp_path: Path, env_id: str, kwargs: dict) -> None:
    """Crash after a mid-rollout checkpoint, resume from it: same final parameters as a run without the crash."""
    n_envs, n_steps, total = 2, 8, 2 * 8 * 12

    def new_model() -> ACKTR:
        model = ACKTR("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=0), n_steps=n_steps, seed=0, **kwargs)
        model.set_logger(Logger(None, []))
        return model

    uninterrupted = new_model().learn(total)

    crashed, snapshots = new_model(), EnvSnapshots()
    # A checkpoint every 13 calls falls in the middle of a rollout (n_steps=8); the crash comes after the second.
    checkpoint = CheckpointCallback(save_freq=13, save_path=str(tmp_path), name_prefix="acktr")
    crashed.learn(total, callback=CallbackList([snapshots, checkpoint, StopAfter(30)]))
    last = max(tmp_path.glob("acktr_*_steps.zip"), key=lambda path: int(path.stem.split("_")[1]))

    resumed = ACKTR.load(last, force_reset=False)
    resumed.set_env(snapshots.snapshots[resumed.num_timesteps], force_reset=False)
    resumed.set_logger(Logger(None, []))
    assert resumed.num_timesteps % (n_envs * n_steps) == 0  # saved as of the start of its rollout
    resumed.learn(total - resumed.num_timesteps, reset_num_timesteps=False)

    assert resumed.num_timesteps == uninterrupted.num_timesteps
    assert th.equal(parameters_vector(resumed), parameters_vector(uninterrupted))


def test_checkpoint_and_its_vec_normalize_statistics_resume_together(tmp_path: Path) -> None:
    """A mid-rollout checkpoint's VecNormalize pickle holds the statistics as of the rollout start, as its model does."""
    n_envs, n_steps, total = 2, 8, 2 * 8 * 12

    def normalized(venv: VecEnv) -> VecNormalize:
        return VecNormalize(venv, norm_reward=False)  # the running returns are not pickled by SB3: they restart at 0

    def new_model() -> ACKTR:
        env = normalized(make_vec_env("Pendulum-v1", n_envs=n_envs, seed=0))
        model = ACKTR("MlpPolicy", env, n_steps=n_steps, seed=0)
        model.set_logger(Logger(None, []))
        return model

    uninterrupted = new_model().learn(total)
    crashed, snapshots = new_model(), EnvSnapshots()
    checkpoint = CheckpointCallback(save_freq=13, save_path=str(tmp_path), name_prefix="acktr", save_vecnormalize=True)
    crashed.learn(total, callback=CallbackList([snapshots, checkpoint, StopAfter(30)]))
    last = max(tmp_path.glob("acktr_*_steps.zip"), key=lambda path: int(path.stem.split("_")[1]))

    resumed = ACKTR.load(last, force_reset=False)
    snapshot = snapshots.snapshots[resumed.num_timesteps]
    assert isinstance(snapshot, VecNormalize)  # a copy without its environments (VecNormalize copies as it pickles)
    environments = snapshots.inner[resumed.num_timesteps]
    statistics = VecNormalize.load(str(tmp_path / f"acktr_vecnormalize_{last.stem.split('_')[1]}_steps.pkl"), environments)
    saved, at_start = statistics.obs_rms, snapshot.obs_rms
    assert isinstance(saved, RunningMeanStd) and isinstance(at_start, RunningMeanStd)
    assert np.array_equal(saved.mean, at_start.mean) and saved.count == at_start.count
    resumed.set_env(statistics, force_reset=False)
    resumed.set_logger(Logger(None, []))
    resumed.learn(total - resumed.num_timesteps, reset_num_timesteps=False)
    assert th.equal(parameters_vector(resumed), parameters_vector(uninterrupted))
    assert uninterrupted.get_vec_normalize_env() is uninterrupted.get_env()  # no rollout in progress: the wrapper itself


def small_model(policy: str, **kwargs) -> ACKTR:
    env: Any = FakeImageEnv(screen_height=36, screen_width=36) if policy == "CnnPolicy" else make_vec_env("Pendulum-v1", 2)
    # Statistics at every update (not every 4, the MLP default): the tests follow the factors update by update.
    settings = dict(dict(n_steps=4, seed=0, inverse_update_interval=2, stats_update_interval=1), **kwargs)
    model = ACKTR(policy, env, **settings)
    model.set_logger(Logger(None, []))
    return model.learn(model.n_steps * model.n_envs * 3)


def load_with(tmp_path: Path, model: ACKTR, **kwargs) -> ACKTR:
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(tmp_path / "acktr", env=model.get_env(), **kwargs)
    loaded.set_logger(Logger(None, []))
    return loaded


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
@pytest.mark.parametrize("saved_mode, loaded_mode", [("exact", "factored"), ("factored", "exact")])
def test_load_with_another_damping_mode_recomputes_the_inverses(tmp_path: Path, policy: str, saved_mode, loaded_mode) -> None:
    """The inverses are recomputed at load from the factors they were computed from: in the mode given to load."""
    model = small_model(policy, damping_mode=saved_mode)
    loaded = load_with(tmp_path, model, damping_mode=loaded_mode)
    kfac = loaded.kfac
    assert not kfac._inverses  # recomputed by the next step, not by load (a model loaded to predict never needs them)
    kfac._install_saved_inverses()
    assert kfac.damping_mode == loaded_mode and len(kfac._inverses) == len(kfac.blocks)
    for block, saved_block in zip(kfac.blocks, model.kfac.blocks, strict=True):
        saved = model.kfac._inverses[saved_block]
        expected, _ = compute_inverse(saved.a_factor, saved.g_factor, loaded_mode, kfac.param_groups[0]["damping"])
        grad = th.randn(block.weight.shape[0], saved.a_factor.shape[0])
        assert th.equal(kfac._inverses[block].precondition(grad), expected.precondition(grad))
    loaded.learn(4 * loaded.n_envs * 2)
    assert_no_numerical_trouble(kfac)


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_saved_kfac_state_keeps_triangles_of_factors_and_no_inverse(policy: str) -> None:
    """Per block: the upper triangles of the averaged factors and of the factors of the inverse, nothing else large."""
    kfac = small_model(policy).kfac
    state = kfac.state_dict()
    index = {id(param): i for i, param in enumerate(param for group in kfac.param_groups for param in group["params"])}
    for block in kfac.blocks:
        saved, live = state["state"][index[id(block.weight)]], kfac.state[block.weight]
        for name, average in (("A", "A_average"), ("G", "G_average")):
            size = live[average].shape[0]
            assert saved[average].shape == saved["inverse_factors"][name].shape == (size * (size + 1) // 2,)
        assert live["A_average"].dim() == 2 and "inverse_factors" not in live  # the live state is not touched
    floats = [
        t for entry in state["state"].values() for v in entry.values() for t in (v.values() if isinstance(v, dict) else [v])
    ]
    saved_numbers = sum(t.numel() for t in floats if isinstance(t, th.Tensor))
    factor_sizes = [kfac.state[block.weight][key].shape[0] for block in kfac.blocks for key in AVERAGE_KEYS]
    momentum = sum(p.numel() for group in kfac.param_groups for p in group["params"])
    assert saved_numbers <= sum(size * (size + 1) for size in factor_sizes) + momentum + 10 * len(kfac.blocks)


def test_state_saved_with_inverses_loads_with_inverses_from_the_averages() -> None:
    """A state of version 0.4.0 and earlier (the inverses themselves under 'inverse'): recomputed from the averages."""
    model = small_model("MlpPolicy")  # inverses refreshed by the third update
    model.train()  # a fourth: the averages move on
    block = model.kfac.blocks[0]
    averaged = model.kfac.factors(block)
    assert averaged is not None and not th.allclose(model.kfac._inverses[block].a_factor, averaged[0])
    state = model.kfac.state_dict()
    for entry in state["state"].values():
        if "inverse_factors" in entry:
            entry["inverse"] = {"a_matrix": th.zeros(1)}  # the old layout: never read
            del entry["inverse_factors"]
    kfac = model.kfac
    kfac.load_state_dict(state)
    kfac._install_saved_inverses()
    for block in kfac.blocks:
        averaged = kfac.factors(block)
        assert averaged is not None
        assert th.equal(kfac._inverses[block].a_factor, (averaged[0] + averaged[0].T) / 2)
        assert "inverse" not in kfac.state[block.weight]


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_load_with_another_stats_decay_keeps_the_averages_debiased(tmp_path: Path, policy: str) -> None:
    model = small_model(policy, stats_decay=0.99)
    loaded = load_with(tmp_path, model, stats_decay=0.5)
    assert loaded.kfac.stats_decay == 0.5
    for block, loaded_block in zip(model.kfac.blocks, loaded.kfac.blocks, strict=True):
        original, restored = model.kfac.factors(block), loaded.kfac.factors(loaded_block)
        assert original is not None and restored is not None
        assert th.allclose(original[0], restored[0]) and th.allclose(original[1], restored[1])
    # One more batch weighs half of the average with the new decay.
    block = loaded.kfac.blocks[-1]
    state = loaded.kfac.state[block.weight]
    average, weight = state["A_average"].clone(), state["statistics_weight"]
    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    inputs: list[th.Tensor] = []
    hook = block.module.register_forward_hook(lambda module, args, output: inputs.append(args[0].detach()))
    loaded.train()
    hook.remove()
    rows = th.nn.functional.pad(inputs[0], (0, 1), value=1.0)  # the statistics' pass, the first forward of train()
    batch = rows.T @ rows / len(rows)
    assert th.allclose(state["A_average"], 0.5 * average + 0.5 * batch, atol=1e-6)
    factors = loaded.kfac.factors(block)
    assert factors is not None
    assert th.allclose(factors[0], (0.5 * average + 0.5 * batch) / (0.5 * weight + 0.5))


def test_load_with_another_conv_mode_estimates_the_convolutions_anew(tmp_path: Path) -> None:
    model = small_model("CnnPolicy", conv_mode="expand")
    with pytest.warns(UserWarning, match="conv_mode='expand'"):
        loaded = load_with(tmp_path, model, conv_mode="reduce")
    kfac = loaded.kfac
    assert all(block.conv_mode == "reduce" for block in kfac.blocks)
    assert [kfac.factors(block) is None for block in kfac.blocks] == [block.is_conv for block in kfac.blocks]
    assert [block in kfac._saved_inverse_factors for block in kfac.blocks] == [not block.is_conv for block in kfac.blocks]
    loaded.learn(4 * 2, reset_num_timesteps=False)
    assert all(kfac.factors(block) is not None and block in kfac._inverses for block in kfac.blocks)
    assert_no_numerical_trouble(kfac)


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(damping=0.05),
        dict(patches_per_feature=None),
        dict(stats_update_interval=3),
        dict(inverse_update_interval=5),
        dict(momentum=0.5),
        dict(kl_clip=0.002),
    ],
)
def test_other_kfac_arguments_given_to_load_take_effect(tmp_path: Path, policy: str, kwargs: dict) -> None:
    loaded = load_with(tmp_path, small_model(policy), **kwargs)
    block = loaded.kfac.blocks[0]
    counts = [loaded.kfac.state[block.weight]["statistics_count"]]
    inverses = []

    class Watch(BaseCallback):
        def _on_rollout_end(self) -> None:  # before each update: what the previous one left
            counts.append(loaded.kfac.state[block.weight]["statistics_count"])
            inverses.append(loaded.kfac._inverses.get(block))

        def _on_step(self) -> bool:
            return True

    loaded.learn(4 * loaded.n_envs * 3, reset_num_timesteps=False, callback=Watch())
    kfac, (name, value) = loaded.kfac, next(iter(kwargs.items()))
    counts.append(kfac.state[block.weight]["statistics_count"])
    if name == "stats_update_interval":  # updates 3, 4 and 5 of the run: statistics at the first only
        assert [later - counts[0] for later in counts[1:]] == [0, 1, 1, 1]
    elif name == "inverse_update_interval":  # the saved inverses, restored at update 3, are kept (refreshed every 5)
        assert inverses[1] is not None and kfac._inverses[block] is inverses[1]
    elif name in ("damping", "momentum", "kl_clip"):
        assert kfac.param_groups[0][name] == value
    else:
        assert all(block.max_patches is None for block in kfac.blocks)
    assert_no_numerical_trouble(kfac)
