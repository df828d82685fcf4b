"""Data-parallel K-FAC: ranks of a gloo process group, spawned from the test, against one process on the whole batch."""

import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch as th
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from sb3_acktr.kfac import KFAC

WORLD_SIZE = 2
DTYPE = th.float64


def make_model() -> nn.Module:
    th.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, kernel_size=3, stride=2), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4), nn.Tanh(), nn.Linear(4, 3)
    )
    return model.to(DTYPE)


def make_batches(n_updates: int = 4, batch_size: int = 8) -> list[tuple[th.Tensor, th.Tensor, th.Tensor]]:
    """Inputs, weights of the output gradients (a Fisher loss without sampling) and regression targets."""
    generator = th.Generator().manual_seed(1)
    shapes = [(batch_size, 2, 7, 7), (batch_size, 3), (batch_size, 3)]
    return [tuple(th.randn(shape, generator=generator, dtype=DTYPE) for shape in shapes) for _ in range(n_updates)]  # type: ignore[misc]


def train(kfac: KFAC, model: nn.Module, batches: list, examples: slice) -> th.Tensor:
    """One K-FAC update per batch on ``examples`` of it; the parameters at the end, flat."""
    for inputs, weights, targets in batches:
        inputs, weights, targets = inputs[examples], weights[examples], targets[examples]
        with kfac.capture_statistics():
            outputs = model(inputs)
        kfac.update_statistics((outputs * weights).sum())
        kfac.zero_grad()
        F.mse_loss(outputs, targets).backward()
        kfac.step()
    return th.cat([param.detach().reshape(-1) for param in model.parameters()])


def kfac_for(model: nn.Module, process_group: dist.ProcessGroup | None = None) -> KFAC:
    return KFAC(model, stats_decay=0.9, inverse_update_interval=2, patches_per_feature=None, process_group=process_group)


def share(rank: int, batch_size: int = 8) -> slice:
    size = batch_size // WORLD_SIZE
    return slice(rank * size, (rank + 1) * size)


def _join_ranks(rank: int, init_file: str) -> None:
    th.set_num_threads(1)
    init_method = f"file://{init_file}"
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))


def _train_on_share(rank: int, init_file: str, out: str) -> None:
    _join_ranks(rank, init_file)
    model = make_model()
    kfac = kfac_for(model, dist.group.WORLD)
    th.save(train(kfac, model, make_batches(), share(rank)), Path(out) / f"rank_{rank}.pt")
    dist.destroy_process_group()


def _train_with_one_rank_nonfinite(rank: int, init_file: str, out: str) -> None:
    _join_ranks(rank, init_file)
    model = make_model()
    kfac = kfac_for(model, dist.group.WORLD)
    batches = make_batches(n_updates=2)
    if rank == 1:
        batches[1][1][share(rank).start, 0] = float("inf")  # in this rank's Fisher loss of the second update
    parameters = train(kfac, model, batches, share(rank))
    th.save((parameters, kfac.counters), Path(out) / f"rank_{rank}.pt")
    dist.destroy_process_group()


def run_ranks(worker, tmp_path: Path, timeout: float = 120.0) -> list:
    """Run ``worker(rank, init_file, out)`` on every rank; what each saved, by rank. A hang fails instead of waiting."""
    context = mp.start_processes(
        worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1.0):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD_SIZE} ranks did not finish within {timeout} s")
    return [th.load(tmp_path / f"rank_{rank}.pt", weights_only=False) for rank in range(WORLD_SIZE)]


def test_ranks_take_the_step_of_one_process_on_the_whole_batch(tmp_path: Path) -> None:
    """Gradients, factors, inverses, trust region and momentum over four updates: the same parameters as one process."""
    ranks = run_ranks(_train_on_share, tmp_path)
    model = make_model()
    whole_batch = train(kfac_for(model), model, make_batches(), slice(None))
    assert th.equal(ranks[0], ranks[1])
    assert not th.allclose(ranks[0], th.cat([param.detach().reshape(-1) for param in make_model().parameters()]))
    assert th.allclose(ranks[0], whole_batch, rtol=0, atol=1e-12)


def test_nonfinite_statistics_of_one_rank_are_skipped_by_every_rank(tmp_path: Path) -> None:
    ranks = run_ranks(_train_with_one_rank_nonfinite, tmp_path)
    (parameters_0, counters_0), (parameters_1, counters_1) = ranks
    assert th.equal(parameters_0, parameters_1) and th.isfinite(parameters_0).all()
    assert counters_0 == counters_1 and counters_0["nonfinite_statistics"] == 1


def test_async_inverses_are_refused_with_a_process_group() -> None:
    with pytest.raises(ValueError, match="async_inverse cannot be used with a process_group"):
        KFAC(make_model(), async_inverse=True, process_group=object())
