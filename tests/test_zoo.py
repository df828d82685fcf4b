"""rl-zoo3 integration: every hyperparameter section trains, and the zoo's train/enjoy/continue/optimize work."""

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize

from sb3_acktr import ACKTR, AcktrCNN
from sb3_acktr.zoo import (
    default_hyperparameters_file,
    hyperparameter_sections,
    main,
    sample_acktr_params,
    section_policy_kwargs,
    zoo_arguments,
)

pytest.importorskip("rl_zoo3", reason="the zoo extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = hyperparameter_sections()
REQUIRED_SECTIONS = {
    "atari",
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
    "LunarLander-v3",
    "LunarLanderContinuous-v3",
    "Pendulum-v1",
    "BipedalWalker-v3",
    "HalfCheetah-v5",
    "Hopper-v5",
    "Walker2d-v5",
    "Ant-v5",
    "Swimmer-v5",
}


def zoo(*arguments: str | int | Path) -> None:
    main([str(argument) for argument in arguments])


def run_directory(log_folder: Path, env_id: str) -> Path:
    runs = sorted((log_folder / "acktr").glob(f"{env_id}_*"), key=lambda path: int(path.name.rsplit("_", 1)[1]))
    assert runs, f"no run of {env_id} in {log_folder}"
    return runs[-1]


def test_hyperparameter_file_is_the_shipped_one() -> None:
    assert (ROOT / "hyperparams" / "acktr.yml").read_text() == Path(default_hyperparameters_file()).read_text()
    assert REQUIRED_SECTIONS <= set(SECTIONS)


def test_arguments_default_to_acktr_and_our_file() -> None:
    assert zoo_arguments("train", ["--env", "X"]) == [
        "--algo",
        "acktr",
        "--env",
        "X",
        "--conf-file",
        default_hyperparameters_file(),
    ]
    assert zoo_arguments("train", ["--algo", "acktr", "-conf", "a.yml"]) == ["--algo", "acktr", "-conf", "a.yml"]
    assert zoo_arguments("train", ["--algo", "a2c", "--env", "X"]) == ["--algo", "a2c", "--env", "X"]
    assert zoo_arguments("enjoy", ["--env", "X"]) == ["--algo", "acktr", "--env", "X"]


# The keys of a section that rl-zoo3 reads itself (the rest are constructor arguments; policy_kwargs is compared apart).
ZOO_KEYS = {"n_envs", "n_timesteps", "policy", "normalize", "frame_stack", "env_wrapper", "policy_kwargs"}


def section_env_id(section: str) -> str:
    return "PongNoFrameskip-v4" if section == "atari" else section


def knob_value(value):
    """A hyperparameter as a file gives it (``lin_X`` for a linear schedule) or as the model holds it."""
    if isinstance(value, str) and value.startswith("lin_"):
        return ("lin", float(value[4:]))
    if callable(value):  # a linear schedule to 0, or a constant one
        return ("lin", value(1.0)) if value(0.0) == 0.0 else value(1.0) if value(0.0) == value(1.0) else value
    return value


@pytest.mark.parametrize("section", sorted(REQUIRED_SECTIONS))
def test_every_section_builds_and_runs_updates(section: str, tmp_path: Path) -> None:
    hyperparams = SECTIONS[section]
    n_envs = hyperparams.get("n_envs", 1)
    n_steps = hyperparams.get("n_steps", 20)
    n_updates = 1 if section == "atari" or n_steps >= 2048 else 2
    env_id = section_env_id(section)
    zoo("train", "--env", env_id, "-n", n_updates * n_envs * n_steps, "-f", tmp_path, "--seed", 0, "--eval-freq", -1)
    run = run_directory(tmp_path, env_id)
    model = ACKTR.load(run / f"{env_id}.zip")
    assert model.kfac.n_steps == n_updates
    assert model.n_steps == n_steps and model.n_envs == n_envs
    if hyperparams.get("normalize"):
        assert (run / env_id / "vecnormalize.pkl").is_file()
    for key in hyperparams.keys() - ZOO_KEYS:  # every constructor argument the section sets
        assert knob_value(getattr(model, key)) == knob_value(hyperparams[key]), key
    if "policy_kwargs" in hyperparams:
        assert model.policy_kwargs == section_policy_kwargs(hyperparams["policy_kwargs"])
    if "AcktrCNN" in hyperparams.get("policy_kwargs", ""):
        assert isinstance(model.policy.features_extractor, AcktrCNN)


def test_train_enjoy_continue_and_optimize(tmp_path: Path) -> None:
    env_id = "Acrobot-v1"  # normalized: VecNormalize statistics must be saved and reused
    two_updates = 2 * SECTIONS[env_id]["n_envs"] * SECTIONS[env_id].get("n_steps", 20)
    zoo("train", "--env", env_id, "-n", two_updates, "-f", tmp_path, "--seed", 1, "--eval-freq", -1)
    run = run_directory(tmp_path, env_id)
    for name in ("args.yml", "config.yml", "vecnormalize.pkl"):
        assert (run / env_id / name).is_file(), name
    assert list(run.glob("*.monitor.csv"))

    zoo("enjoy", "--env", env_id, "-f", tmp_path, "-n", 50, "--no-render")

    model_file = run / f"{env_id}.zip"
    zoo("train", "--env", env_id, "-n", two_updates, "-f", tmp_path, "--seed", 2, "--eval-freq", -1, "-i", model_file)
    continued = run_directory(tmp_path, env_id)
    assert continued != run
    model = ACKTR.load(continued / f"{env_id}.zip")
    assert model.kfac.n_steps == 4  # 2 updates, then 2 more after loading

    zoo(
        "train", "--env", "CartPole-v1", "-n", 320, "-f", tmp_path / "opt", "-optimize", "--n-trials", 2,
        "--n-jobs", 1, "--sampler", "random", "--pruner", "none", "--eval-episodes", 2, "--n-evaluations", 1, "--seed", 0,
    )  # fmt: skip
    reports = list((tmp_path / "opt" / "acktr").glob("report_CartPole-v1_2-trials-320-random-none_*.csv"))
    assert reports


def normalization(path: Path) -> VecNormalize:
    """VecNormalize statistics as saved (without an environment)."""
    with open(path, "rb") as file:
        return pickle.load(file)


def test_resume_continues_the_checkpoints_run(tmp_path: Path) -> None:
    env_id = "Acrobot-v1"  # normalized: the checkpoint's VecNormalize statistics must be the ones resumed
    rollout = SECTIONS[env_id]["n_envs"] * SECTIONS[env_id]["n_steps"]
    zoo("train", "--env", env_id, "-n", 3 * rollout, "-f", tmp_path, "--seed", 0, "--eval-freq", -1, "--save-freq", rollout)
    first = run_directory(tmp_path, env_id)
    # Saved on the last step of the second rollout, before its update: it resumes by collecting that rollout again.
    checkpoint = first / f"rl_model_{2 * rollout}_steps.zip"
    saved_statistics = normalization(first / f"rl_model_vecnormalize_{2 * rollout}_steps.pkl")
    assert ACKTR.load(checkpoint).num_timesteps == rollout

    with pytest.raises(ValueError, match="-n is the run's whole budget"):
        zoo("train", "--env", env_id, "-n", rollout, "-f", tmp_path, "--eval-freq", -1, "-i", checkpoint, "--resume")
    with pytest.raises(SystemExit, match="-i/--trained-agent"):
        zoo("train", "--env", env_id, "-n", 3 * rollout, "-f", tmp_path, "--resume")

    resume = ("-i", checkpoint, "--resume")
    zoo("train", "--env", env_id, "-n", 3 * rollout, "-f", tmp_path, "--seed", 1, "--eval-freq", -1, *resume)
    resumed = run_directory(tmp_path, env_id)
    model = ACKTR.load(resumed / f"{env_id}.zip")
    # The run's budget, its timestep count and its schedules' progress go on from the checkpoint's.
    assert model.num_timesteps == model._total_timesteps == 3 * rollout
    assert model.kfac.n_steps == 3
    statistics = normalization(resumed / env_id / "vecnormalize.pkl")
    # The checkpoint's observation count, then the resumed run's: a reset and two rollouts of 16 envs.
    n_envs = SECTIONS[env_id]["n_envs"]
    assert isinstance(statistics.obs_rms, RunningMeanStd)
    assert statistics.obs_rms.count == pytest.approx(saved_statistics.obs_rms.count + n_envs + 2 * rollout, abs=1e-3)


def test_trust_region_schedules_from_the_command_line(tmp_path: Path) -> None:
    zoo(
        "train", "--env", "CartPole-v1", "-n", 320, "-f", tmp_path, "--seed", 0, "--eval-freq", -1,
        "-params", "kl_clip:'lin_0.004'", "vf_kl_clip:'lin_0.002'",
    )  # fmt: skip
    model = ACKTR.load(run_directory(tmp_path, "CartPole-v1") / "CartPole-v1.zip")
    assert callable(model.kl_clip) and callable(model.vf_kl_clip)
    assert model.kl_clip(0.5) == pytest.approx(0.002) and model.vf_kl_clip(0.5) == pytest.approx(0.001)
    assert [group["kl_clip"] for group in model.kfac.param_groups] == [0.0, 0.0]  # the last update's bounds
    with pytest.raises(ValueError, match="kl_clip must be a number, null or 'lin_<initial value>'"):
        zoo("train", "--env", "CartPole-v1", "-n", 320, "-f", tmp_path, "--eval-freq", -1, "-params", "kl_clip:'exp_0.1'")
    with pytest.raises(ValueError, match="vf_kl_clip must be a number, null or 'lin_<initial value>'"):
        zoo("train", "--env", "CartPole-v1", "-n", 320, "-f", tmp_path, "--eval-freq", -1, "-params", "vf_kl_clip:'lin_x'")


def test_zoo_keeps_vf_kl_clip_auto_for_acktr() -> None:
    from sb3_acktr.zoo import preprocess_trust_region_schedules

    kept = {"vf_kl_clip": "auto", "vf_coef": "auto"}
    assert preprocess_trust_region_schedules(dict(kept)) == kept
    with pytest.raises(ValueError, match="kl_clip must be a number"):
        preprocess_trust_region_schedules({"kl_clip": "auto"})


@pytest.mark.parametrize(
    "schedule, vf_kl_clip, n_critic_updates, expected_critic_updates",
    [("constant", None, 10, 1), ("linear", None, 1, 1), ("constant", 0.03, 3, 3)],
)
def test_sampled_parameters_build_a_model(
    schedule: str, vf_kl_clip: float | None, n_critic_updates: int, expected_critic_updates: int
) -> None:
    """
    The Optuna sampler's output, for a fixed trial, is a set of valid ACKTR arguments (kl_clip decaying if sampled;
    further critic steps only with the critic's own region).
    """
    optuna = pytest.importorskip("optuna")
    fixed = dict(
        n_steps=5, one_minus_gamma=0.01, one_minus_gae_lambda=0.05, learning_rate=0.2, ent_coef=1e-4, vf_coef=0.5,
        kl_clip=0.002, kl_clip_schedule=schedule, vf_kl_clip=vf_kl_clip, n_critic_updates=n_critic_updates, damping=0.01,
        momentum=0.9, stats_decay=0.95, damping_mode="factored", inverse_update_interval=10, net_arch="tiny",
        activation_fn="relu",
    )  # fmt: skip
    hyperparams = sample_acktr_params(optuna.trial.FixedTrial(fixed), n_actions=2, n_envs=1, additional_args={})
    model = ACKTR("MlpPolicy", "CartPole-v1", **hyperparams)
    assert model.gamma == pytest.approx(0.99) and model.policy.net_arch == dict(pi=[64], vf=[64])
    assert knob_value(model.kl_clip) == (("lin", 0.002) if schedule == "linear" else 0.002)
    assert model.n_critic_updates == expected_critic_updates


def test_console_script_prints_usage() -> None:
    script = shutil.which("sb3-acktr-zoo", path=os.path.dirname(sys.executable))
    assert script is not None, "the console script is not installed"
    result = subprocess.run([script], capture_output=True, text=True)
    assert result.returncode != 0
    assert "usage: python -m sb3_acktr.zoo {train,enjoy,record_video}" in result.stderr


def test_record_video(tmp_path: Path) -> None:
    pytest.importorskip("moviepy")
    zoo("train", "--env", "CartPole-v1", "-n", 320, "-f", tmp_path, "--seed", 0, "--eval-freq", -1)
    env = dict(os.environ, MPLBACKEND="Agg")
    subprocess.run(
        [sys.executable, "-m", "sb3_acktr.zoo", "record_video", "--env", "CartPole-v1", "-f", tmp_path, "-n", "20"],
        check=True,
        env=env,
        capture_output=True,
    )
    assert list((run_directory(tmp_path, "CartPole-v1") / "videos").glob("*.mp4"))
