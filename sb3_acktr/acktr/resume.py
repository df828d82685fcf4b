"""What exact resumption from a checkpoint needs beyond SB3's saved data: the random state and the rollout start."""

import random
from typing import Any, NamedTuple

import numpy as np
import torch as th


class RolloutStart(NamedTuple):
    """What a checkpoint needs to repeat the rollout in progress: the state when it started."""

    num_timesteps: int
    last_obs: Any
    episode_starts: Any
    random_state: dict[str, Any]
    # The VecNormalize statistics (obs_rms, ret_rms), if the environment is normalised.
    normalization: tuple[Any, Any] | None = None


def capture_random_state() -> dict[str, Any]:
    """The global random states SB3 draws from (Python, NumPy, PyTorch CPU and CUDA)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}
    if th.cuda.is_available() and th.cuda.is_initialized():
        state["torch_cuda"] = th.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    if "torch_cuda" in state and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["torch_cuda"])


def all_finite(observation: Any) -> bool:
    """Whether an observation (array or dict of arrays) holds only finite numbers."""
    values = observation.values() if isinstance(observation, dict) else [observation]
    return all(np.isfinite(np.asarray(value, dtype=np.float64)).all() for value in values)
