"""
What data-parallel training on ``torch.distributed`` needs besides K-FAC's own join (``KFAC(process_group=...)``): the
launch, equal starting parameters, global moments, the ranks' agreement to go on, and the episodes of every rank.
"""

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch as th
import torch.distributed as dist
from stable_baselines3.common.running_mean_std import RunningMeanStd

# Set by torchrun (and torch.distributed.launch) in every process it starts.
WORLD_SIZE_VARIABLE = "WORLD_SIZE"


def launched_on_several_processes() -> bool:
    """Whether this process is one of several started by torchrun, or joined a process group of several already."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    return int(os.environ.get(WORLD_SIZE_VARIABLE, "1")) > 1


def join_process_group(device: th.device) -> None:
    """Join the default process group from torchrun's variables, unless joined already (gloo on CPU, nccl on CUDA)."""
    if not dist.is_available():
        raise RuntimeError("Data-parallel training needs torch.distributed, which this build of PyTorch lacks")
    if device.type == "cuda":
        th.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def collective_device() -> th.device:
    """Where the tensors of a collective must lie: this process's GPU with nccl, else the CPU."""
    return th.device("cuda", th.cuda.current_device()) if dist.get_backend() == "nccl" else th.device("cpu")


def rank() -> int:
    """This process's rank in the default process group (0 when there is none)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def local_device(device: th.device) -> th.device:
    """On CUDA without an index, the GPU of this process on its node (torchrun's ``LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None:
        return th.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def broadcast_from_first_rank(tensors: Iterable[th.Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's (so that all ranks start from the same parameters)."""
    with th.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def all_ranks_agree(value: bool) -> bool:
    """True on every rank when ``value`` is True on every rank (a callback that stops one rank stops them all)."""
    flag = th.tensor([int(value)], dtype=th.int64, device=collective_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def check_equal_on_every_rank(name: str, value: int) -> None:
    """Raise the same ``ValueError`` on every rank unless ``value`` is the same on all of them."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        raise ValueError(
            f"Data-parallel ACKTR needs the same {name} on every rank (each rank's share weighs equally in the joined "
            f"gradient and statistics), got {values} by rank"
        )


def global_mean_and_std(values: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """The mean and (unbiased) standard deviation of ``values`` joined over all ranks, on every rank."""
    moments = th.stack([values.sum(), values.square().sum(), th.tensor(float(values.numel()), device=values.device)])
    moments = moments.double()
    dist.all_reduce(moments)
    total, total_of_squares, count = moments
    mean = total / count
    variance = (total_of_squares - count * mean**2) / (count - 1)
    return mean.to(values.dtype), variance.clamp(min=0.0).sqrt().to(values.dtype)


def gather_episodes(episodes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The episode records (``{"r": return, "l": length, ...}``) of every rank, on every rank."""
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(episodes))
    return [episode for rank_episodes in gathered for episode in rank_episodes]


def join_running_moments(before: RunningMeanStd, after: RunningMeanStd) -> None:
    """
    Fold into ``after`` the observations every other rank added to the shared ``before`` (``VecNormalize`` statistics,
    equal on all ranks at the last join): each rank's new observations are recovered from its two states, summed over
    the ranks, and merged with ``before`` as one batch, so that every rank holds the statistics of all observations.
    """
    new_count = after.count - before.count
    new_sum = after.mean * after.count - before.mean * before.count
    new_squares = (after.var + after.mean**2) * after.count - (before.var + before.mean**2) * before.count
    parts = [np.atleast_1d(new_sum), np.atleast_1d(new_squares), np.array([new_count])]
    joined = th.from_numpy(np.concatenate(parts).astype(np.float64)).to(collective_device())
    dist.all_reduce(joined)
    joined = joined.cpu()
    size = np.size(after.mean)
    total_sum, total_squares, total_count = joined[:size].numpy(), joined[size : 2 * size].numpy(), float(joined[-1])
    count = before.count + total_count
    mean = (before.mean * before.count + total_sum.reshape(np.shape(after.mean))) / count
    squares = (before.var + before.mean**2) * before.count + total_squares.reshape(np.shape(after.var))
    after.mean, after.var, after.count = mean, np.maximum(squares / count - mean**2, 0.0), count
