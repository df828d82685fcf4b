"""
rl-zoo3 integration: ACKTR as a zoo algorithm, with this package's hyperparameter file.

    python -m sb3_acktr.zoo train --env CartPole-v1                  # or the console script `sb3-acktr-zoo`
    python -m sb3_acktr.zoo train --env CartPole-v1 -optimize -n 50000 --n-trials 20
    python -m sb3_acktr.zoo enjoy --env CartPole-v1 -f logs/
    python -m sb3_acktr.zoo record_video --env CartPole-v1 -f logs/ -n 1000
    python -m sb3_acktr.zoo train --env CartPole-v1 -n 100000 -i logs/acktr/CartPole-v1_1/rl_model_50000_steps.zip --resume

Every rl-zoo3 option is passed through. ``--algo`` defaults to ``acktr``, and ``train`` of ACKTR reads
``sb3_acktr/hyperparams/acktr.yml`` unless ``-conf``/``--conf-file`` is given (other algorithms use the zoo's files).
Checkpoints (``--save-freq``) save the VecNormalize statistics with the model.

``--resume`` (ours, any algorithm) continues the run that saved the model given with ``-i``, where rl-zoo3's ``-i`` alone
starts a new one: the model keeps its timestep count, so ``-n`` is the run's whole budget (it trains the timesteps that
are left) and learning-rate, clip-range and trust-region schedules go on from where the checkpoint was; the
VecNormalize statistics saved with a checkpoint are loaded. The continued run writes a new log folder, as with ``-i``.

Launched by torchrun with several processes, ``train`` trains ACKTR data-parallel: rank 0 writes the usual log folder,
evaluates and saves; the other ranks write to a temporary folder and neither evaluate nor print::

    torchrun --standalone --nproc_per_node=2 -m sb3_acktr.zoo train --env CartPole-v1
"""

import atexit
import contextlib
import os
import re
import runpy
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import yaml
from torch import nn

from sb3_acktr.acktr import ACKTR
from sb3_acktr.common.torch_layers import AcktrCNN

COMMANDS = ("train", "enjoy", "record_video")
RESUME = "--resume"
# Hyperparameters that a file may give as ``lin_<initial value>`` besides the zoo's own (learning_rate, clip_range, ...).
TRUST_REGION_BOUNDS = ("kl_clip", "vf_kl_clip")


def default_hyperparameters_file() -> str:
    """Path of the hyperparameter file shipped with the package (the same file as ``hyperparams/acktr.yml``)."""
    return str(resources.files("sb3_acktr") / "hyperparams" / "acktr.yml")


def hyperparameter_sections() -> dict[str, dict[str, Any]]:
    """The sections of the packaged hyperparameter file, by environment id (and ``atari``)."""
    with open(default_hyperparameters_file()) as file:
        return yaml.safe_load(file)


def section_policy_kwargs(text: str) -> dict[str, Any]:
    """A section's ``policy_kwargs`` string evaluated as the zoo does, where ``nn`` and ``AcktrCNN`` are known names."""
    return eval(text, {"nn": nn, "AcktrCNN": AcktrCNN})


def sample_acktr_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    Optuna sampler for ACKTR: the A2C search space of rl-zoo3 with ACKTR's learning rates, plus the K-FAC knobs
    (trust regions and whether ``kl_clip`` decays linearly, further critic steps, damping, momentum, statistics decay,
    damping mode and inverse refresh interval).
    """
    one_minus_gamma = trial.suggest_float("one_minus_gamma", 0.0001, 0.03, log=True)
    sampled = {
        "n_steps": trial.suggest_categorical("n_steps", [5, 10, 20, 32, 64, 128, 256]),
        "one_minus_gamma": one_minus_gamma,
        "one_minus_gae_lambda": trial.suggest_float("one_minus_gae_lambda", 0.0001, 0.1, log=True),
        "learning_rate": trial.suggest_float("learning_rate", 0.01, 1.0, log=True),
        "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.1, log=True),
        "vf_coef": trial.suggest_float("vf_coef", 0.1, 1.0),
        "kl_clip": trial.suggest_float("kl_clip", 1e-4, 1e-2, log=True),
        "kl_clip_schedule": trial.suggest_categorical("kl_clip_schedule", ["constant", "linear"]),
        "vf_kl_clip": trial.suggest_categorical("vf_kl_clip", [None, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]),
        "n_critic_updates": trial.suggest_categorical("n_critic_updates", [1, 3, 10]),
        "damping": trial.suggest_float("damping", 1e-4, 1e-1, log=True),
        "momentum": trial.suggest_categorical("momentum", [0.0, 0.5, 0.9]),
        "stats_decay": trial.suggest_categorical("stats_decay", [0.9, 0.95, 0.99]),
        "damping_mode": trial.suggest_categorical("damping_mode", ["exact", "factored"]),
        "inverse_update_interval": trial.suggest_categorical("inverse_update_interval", [1, 10, 50]),
        "net_arch": trial.suggest_categorical("net_arch", ["tiny", "small", "medium"]),
        "activation_fn": trial.suggest_categorical("activation_fn", ["tanh", "relu"]),
    }
    trial.set_user_attr("gamma", 1 - one_minus_gamma)
    return convert_acktr_params(sampled)


def convert_acktr_params(sampled_params: dict[str, Any]) -> dict[str, Any]:
    """Sampled (or a stored trial's) parameters as ACKTR arguments: rl-zoo3's on-policy conversion, then the schedule."""
    from rl_zoo3.hyperparams_opt import convert_onpolicy_params
    from rl_zoo3.utils import SimpleLinearSchedule

    hyperparams = convert_onpolicy_params(sampled_params)
    if hyperparams.pop("kl_clip_schedule", "constant") == "linear":
        hyperparams["kl_clip"] = SimpleLinearSchedule(hyperparams["kl_clip"])
    if "vf_kl_clip" in hyperparams and hyperparams["vf_kl_clip"] is None:
        hyperparams["n_critic_updates"] = 1  # further critic steps need the critic's own region
    return hyperparams


def preprocess_trust_region_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """
    ``kl_clip: lin_0.003`` (or ``vf_kl_clip``) in a hyperparameter file: a linear decay to 0, as ``lin_`` gives for
    the zoo's learning rates (``vf_kl_clip: auto`` is kept: ACKTR resolves it).
    """
    from rl_zoo3.utils import SimpleLinearSchedule

    for key in TRUST_REGION_BOUNDS:
        value = hyperparams.get(key)
        if isinstance(value, str) and not (key == "vf_kl_clip" and value == "auto"):
            kind, _, initial = value.partition("_")
            try:
                if kind != "lin":
                    raise ValueError(kind)
                hyperparams[key] = SimpleLinearSchedule(float(initial))
            except ValueError as error:
                raise ValueError(f"{key} must be a number, null or 'lin_<initial value>', got {value!r}") from error
    return hyperparams


def _with_trust_region_schedules(preprocess: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """The zoo's schedule preprocessing followed by ours (the zoo's function is kept as ``zoo_preprocess``)."""

    def preprocess_schedules(hyperparams: dict[str, Any]) -> dict[str, Any]:
        return preprocess_trust_region_schedules(preprocess(hyperparams))

    preprocess_schedules.zoo_preprocess = preprocess  # type: ignore[attr-defined]
    return staticmethod(preprocess_schedules)


def register() -> None:
    """
    Make ``acktr`` an rl-zoo3 algorithm: its class, Optuna sampler and trial-parameter converter. ``AcktrCNN`` becomes
    a name that ``policy_kwargs`` strings in hyperparameter files can use (the zoo evaluates them in its own module), and
    ``kl_clip``/``vf_kl_clip`` accept ``lin_`` schedules.
    """
    from rl_zoo3 import ALGOS, exp_manager
    from rl_zoo3.hyperparams_opt import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

    ALGOS["acktr"] = ACKTR
    vars(exp_manager)["AcktrCNN"] = AcktrCNN
    HYPERPARAMS_SAMPLER["acktr"] = sample_acktr_params
    HYPERPARAMS_CONVERTER["acktr"] = convert_acktr_params
    manager = exp_manager.ExperimentManager
    if not hasattr(manager._preprocess_schedules, "zoo_preprocess"):
        manager._preprocess_schedules = _with_trust_region_schedules(manager._preprocess_schedules)  # type: ignore[method-assign]
    if not hasattr(manager.create_callbacks, "zoo_create_callbacks"):
        manager.create_callbacks = _with_checkpoint_normalization(manager.create_callbacks)  # type: ignore[method-assign]


def _with_checkpoint_normalization(create_callbacks: Callable[[Any], None]) -> Callable[[Any], None]:
    """The zoo's callbacks, with checkpoints that save the VecNormalize statistics too (a run resumes from them)."""
    from stable_baselines3.common.callbacks import CheckpointCallback

    def create_callbacks_saving_normalization(manager: Any) -> None:
        create_callbacks(manager)
        for callback in manager.callbacks:
            if isinstance(callback, CheckpointCallback):
                callback.save_vecnormalize = True

    create_callbacks_saving_normalization.zoo_create_callbacks = create_callbacks  # type: ignore[attr-defined]
    return create_callbacks_saving_normalization


def checkpoint_normalization(model_file: str) -> Path | None:
    """The VecNormalize statistics that a ``CheckpointCallback`` saved with a checkpoint, if it did."""
    match = re.fullmatch(r"(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip", Path(model_file).name)
    if match is None:
        return None
    statistics = Path(model_file).with_name(f"{match['prefix']}_vecnormalize_{match['steps']}_steps.pkl")
    return statistics if statistics.is_file() else None


class _ContinuingModel:
    """A model whose ``learn`` goes on counting its timesteps (``reset_num_timesteps=False``); the rest is the model's."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def learn(self, total_timesteps: int, **kwargs: Any) -> Any:
        return self._model.learn(total_timesteps, reset_num_timesteps=False, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


@contextlib.contextmanager
def resuming_the_run() -> Iterator[None]:
    """
    While active, the zoo's training (with ``-i``) continues the loaded model's run: it keeps its timestep count and
    trains what is left of ``-n``, with the VecNormalize statistics saved with the checkpoint.
    """
    from rl_zoo3 import exp_manager
    from stable_baselines3.common.vec_env import VecNormalize

    manager = exp_manager.ExperimentManager
    learn, maybe_normalize = manager.learn, manager._maybe_normalize

    def learn_what_is_left(self: Any, model: Any) -> None:
        if model.num_timesteps >= self.n_timesteps:
            raise ValueError(
                f"The model has trained {model.num_timesteps} timesteps already: with {RESUME}, -n is the run's whole "
                f"budget ({self.n_timesteps} given)"
            )
        self.n_timesteps -= model.num_timesteps
        learn(self, _ContinuingModel(model))  # type: ignore[arg-type]

    def normalize_from_the_checkpoint(self: Any, env: Any, eval_env: bool) -> Any:
        statistics = checkpoint_normalization(self.trained_agent)
        if statistics is None:
            return maybe_normalize(self, env, eval_env)
        env = VecNormalize.load(str(statistics), env)
        if eval_env:
            env.training = False
            env.norm_reward = False
        return env

    manager.learn, manager._maybe_normalize = learn_what_is_left, normalize_from_the_checkpoint  # type: ignore[method-assign]
    try:
        yield
    finally:
        manager.learn, manager._maybe_normalize = learn, maybe_normalize  # type: ignore[method-assign]


def resume_option(command: str, arguments: list[str]) -> tuple[list[str], bool]:
    """The zoo's arguments without ``--resume``, and whether it was given (with a model to resume, ``-i``)."""
    if RESUME not in arguments:
        return arguments, False
    if command != "train" or not {"-i", "--trained-agent"} & set(arguments):
        raise SystemExit(f"{RESUME} continues the run of the model given with -i/--trained-agent to train")
    return [argument for argument in arguments if argument != RESUME], True


def zoo_arguments(command: str, arguments: list[str]) -> list[str]:
    """The zoo's command line: ``--algo acktr`` unless another is named, and our hyperparameters for ``train``."""
    arguments = list(arguments)
    if "--algo" not in arguments:
        arguments = ["--algo", "acktr", *arguments]
    algo = arguments[arguments.index("--algo") + 1]
    if command == "train" and algo == "acktr" and not {"-conf", "--conf-file"} & set(arguments):
        arguments += ["--conf-file", default_hyperparameters_file()]
    return arguments


def rank_arguments(command: str, arguments: list[str]) -> list[str]:
    """
    Under torchrun with several processes, ``train``'s command line on this rank: rank 0's as given; the other ranks
    write to a temporary folder, do not evaluate, checkpoint or print (they train the same model as rank 0).
    """
    if command != "train" or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return arguments
    if {"-optimize", "--optimize-hyperparameters"} & set(arguments):
        raise SystemExit("Hyperparameter optimisation does not run data-parallel: launch it without torchrun")
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return arguments
    folder = tempfile.mkdtemp(prefix=f"sb3_acktr_rank_{rank}_")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return [*arguments, "-f", folder, "--eval-freq", "-1", "--save-freq", "-1", "--verbose", "0"]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        raise SystemExit(f"usage: python -m sb3_acktr.zoo {{{','.join(COMMANDS)}}} [rl-zoo3 options]\n{__doc__}")
    command = argv[0]
    arguments, resume = resume_option(command, argv[1:])
    arguments = rank_arguments(command, zoo_arguments(command, arguments))
    register()
    sys.argv = [f"rl_zoo3.{command}", *arguments]
    if command == "train":
        from rl_zoo3.train import train

        with resuming_the_run() if resume else contextlib.nullcontext():
            train()
    elif command == "enjoy":
        from rl_zoo3.enjoy import enjoy

        enjoy()
    else:
        # rl_zoo3.record_video is a script without a main function.
        runpy.run_module("rl_zoo3.record_video", run_name="__main__")


if __name__ == "__main__":
    main()
