"""Data-parallel K-FAC and ACKTR: ranks of a gloo process group spawned from the test, against one process."""

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch as th
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn

from sb3_acktr import ACKTR
from sb3_acktr.common import distributed
from sb3_acktr.kfac import KFAC

WORLD_SIZE = 2
DTYPE = th.float64
ROOT = Path(__file__).resolve().parents[1]


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


def kfac_for(model: nn.Module, damping_mode: str, process_group: dist.ProcessGroup | None = None) -> KFAC:
    return KFAC(
        model,
        stats_decay=0.9,
        inverse_update_interval=2,
        patches_per_feature=None,
        damping_mode=damping_mode,  # type: ignore[arg-type]
        process_group=process_group,
    )


def share(rank: int, batch_size: int = 8) -> slice:
    size = batch_size // WORLD_SIZE
    return slice(rank * size, (rank + 1) * size)


def _join_ranks(rank: int, init_file: str, backend: str = "gloo") -> None:
    th.set_num_threads(1)
    if backend == "nccl":
        th.cuda.set_device(rank)
    init_method = f"file://{init_file}"
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))


def _leave_ranks() -> None:
    # Without the barrier a rank could tear gloo down while its peer still talks to it: std::terminate (SIGABRT).
    dist.barrier()
    dist.destroy_process_group()


def _train_on_share(rank: int, init_file: str, out: str) -> None:
    damping_mode, backend = (Path(out) / "settings").read_text().split()
    _join_ranks(rank, init_file, backend)
    device = th.device("cuda", rank) if backend == "nccl" else th.device("cpu")
    model = make_model().to(device)
    kfac = kfac_for(model, damping_mode, dist.group.WORLD)
    batches = [tuple(tensor.to(device) for tensor in batch) for batch in make_batches()]
    th.save(train(kfac, model, batches, share(rank)).cpu(), Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


def _train_with_one_rank_nonfinite(rank: int, init_file: str, out: str) -> None:
    _join_ranks(rank, init_file)
    model = make_model()
    kfac = kfac_for(model, "exact", dist.group.WORLD)
    batches = make_batches(n_updates=2)
    if rank == 1:
        batches[1][1][share(rank).start, 0] = float("inf")  # in this rank's Fisher loss of the second update
    parameters = train(kfac, model, batches, share(rank))
    th.save((parameters, kfac.counters), Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


def _load_with_one_rank_failing_a_decomposition(rank: int, init_file: str, out: str) -> None:
    _join_ranks(rank, init_file)
    model = make_model()
    kfac = kfac_for(model, "exact", dist.group.WORLD)
    batches = make_batches(n_updates=6)
    train(kfac, model, batches[:3], share(rank))  # saved between two refreshes of the inverses
    state = kfac.state_dict()
    model = make_model()
    loaded = kfac_for(model, "exact", dist.group.WORLD)
    loaded.load_state_dict(state)
    for param, saved in zip(model.parameters(), kfac.param_groups[0]["params"], strict=True):
        param.data.copy_(saved.data)
    if rank == 1:  # this rank cannot decompose the first linear layer's input factor (28 x 28)
        real_eigh = th.linalg.eigh

        def eigh(matrix: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
            if matrix.shape[0] == 28:
                raise th.linalg.LinAlgError("simulated failure")
            return real_eigh(matrix)

        th.linalg.eigh = eigh  # type: ignore[assignment]
    parameters = train(loaded, model, batches[3:], share(rank))
    th.save(parameters, Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


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


TWO_GPUS = pytest.mark.skipif(th.cuda.device_count() < WORLD_SIZE, reason="nccl: one GPU per rank")


@pytest.mark.parametrize(
    "damping_mode, backend", [("exact", "gloo"), ("factored", "gloo"), pytest.param("exact", "nccl", marks=TWO_GPUS)]
)
def test_ranks_take_the_step_of_one_process_on_the_whole_batch(tmp_path: Path, damping_mode: str, backend: str) -> None:
    """
    Gradients, factors, inverses (each decomposed by one rank), trust region and momentum over four updates: the same
    parameters as one process (on the CPU: with nccl, to the GPUs' own rounding).
    """
    (tmp_path / "settings").write_text(f"{damping_mode} {backend}")
    ranks = run_ranks(_train_on_share, tmp_path)
    model = make_model()
    whole_batch = train(kfac_for(model, damping_mode), model, make_batches(), slice(None))
    assert th.equal(ranks[0], ranks[1])
    assert not th.allclose(ranks[0], th.cat([param.detach().reshape(-1) for param in make_model().parameters()]))
    assert th.allclose(ranks[0], whole_batch, rtol=0, atol=1e-12 if backend == "gloo" else 1e-9)


def test_nonfinite_statistics_of_one_rank_are_skipped_by_every_rank(tmp_path: Path) -> None:
    ranks = run_ranks(_train_with_one_rank_nonfinite, tmp_path)
    (parameters_0, counters_0), (parameters_1, counters_1) = ranks
    assert th.equal(parameters_0, parameters_1) and th.isfinite(parameters_0).all()
    assert counters_0 == counters_1 and counters_0["nonfinite_statistics"] == 1


def test_ranks_restore_loaded_inverses_together_when_one_rank_fails(tmp_path: Path) -> None:
    """After a load, each inverse is decomposed by one rank and shared: a failure is every rank's, with no hang."""
    parameters_0, parameters_1 = run_ranks(_load_with_one_rank_failing_a_decomposition, tmp_path, timeout=90.0)
    model, batches = make_model(), make_batches(n_updates=6)
    kfac = kfac_for(model, "exact")
    train(kfac, model, batches[:3], slice(None))
    loaded = kfac_for(model, "exact")
    loaded.load_state_dict(kfac.state_dict())
    one_process = train(loaded, model, batches[3:], slice(None))
    assert th.equal(parameters_0, parameters_1)
    assert th.allclose(parameters_0, one_process, rtol=0, atol=1e-12)  # the largest block is decomposed by rank 0


def test_async_inverses_are_refused_with_a_process_group() -> None:
    with pytest.raises(ValueError, match="async_inverse cannot be used with a process_group"):
        KFAC(make_model(), async_inverse=True, process_group=object())


N_ENVS, N_STEPS = 2, 4


class StopAfterRollouts(BaseCallback):
    """Stops training (on the rank it is given to) at the first step after its ``n_rollouts``-th rollout."""

    def __init__(self, n_rollouts: int) -> None:
        super().__init__()
        self.n_rollouts, self.rollouts = n_rollouts, 0

    def _on_rollout_end(self) -> None:
        self.rollouts += 1

    def _on_step(self) -> bool:
        return self.rollouts < self.n_rollouts


def _train_acktr(rank: int, init_file: str, out: str) -> None:
    """Four data-parallel updates on CartPole with VecNormalize and normalised advantages, then a save."""
    _join_ranks(rank, init_file)
    env = VecNormalize(make_vec_env("CartPole-v1", n_envs=N_ENVS))
    model = ACKTR("MlpPolicy", env, n_steps=N_STEPS, normalize_advantage=True, seed=0, distributed=True)
    model.learn(4 * WORLD_SIZE * N_ENVS * N_STEPS)
    model.save(Path(out) / "acktr")
    moments = distributed.global_mean_and_std(th.arange(3.0) + 10 * rank)
    obs_rms = env.obs_rms
    assert isinstance(obs_rms, RunningMeanStd)
    result = dict(
        parameters=th.cat([param.detach().reshape(-1) for param in model.policy.parameters()]),
        num_timesteps=model.num_timesteps,
        kfac_steps=model.kfac.n_steps,
        observations=th.as_tensor(model.rollout_buffer.observations),
        obs_rms=(obs_rms.mean.copy(), obs_rms.var.copy(), obs_rms.count),
        moments=moments,
    )
    th.save(result, Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


def _train_with_adaptive_step_and_critic_steps(rank: int, init_file: str, out: str) -> None:
    """Four data-parallel updates with the paper's adaptive step and two further critic steps per update."""
    _join_ranks(rank, init_file)
    env = make_vec_env("CartPole-v1", n_envs=N_ENVS)
    model = ACKTR("MlpPolicy", env, n_steps=N_STEPS, target_kl=1e-4, n_critic_updates=3, seed=0, distributed=True)
    model.learn(4 * WORLD_SIZE * N_ENVS * N_STEPS)
    parameters = th.cat([param.detach().reshape(-1) for param in model.policy.parameters()])
    result = dict(parameters=parameters, factor=model.step_size_factor, kfac_steps=model.kfac.n_steps)
    th.save(result, Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


def _stop_and_unequal_rollouts(rank: int, init_file: str, out: str) -> None:
    """Rank 1's callback stops after two rollouts; then rank 1 asks for another rollout size than rank 0's."""
    _join_ranks(rank, init_file)
    model = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=N_ENVS), n_steps=N_STEPS, seed=0, distributed=True)
    model.learn(10 * WORLD_SIZE * N_ENVS * N_STEPS, callback=StopAfterRollouts(2) if rank == 1 else None)
    n_steps = N_STEPS + rank
    unequal = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=N_ENVS), n_steps=n_steps, seed=0, distributed=True)
    try:
        unequal.learn(100)
        error = ""
    except ValueError as raised:
        error = str(raised)
    th.save(dict(kfac_steps=model.kfac.n_steps, error=error), Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


def _continue_single_process_model(rank: int, init_file: str, out: str) -> None:
    """Every rank loads a model saved by one process and trains it on, data-parallel."""
    _join_ranks(rank, init_file)
    model = ACKTR.load(Path(out) / "single", env=make_vec_env("CartPole-v1", n_envs=N_ENVS), seed=1)
    model.learn(WORLD_SIZE * N_ENVS * N_STEPS, reset_num_timesteps=False)
    parameters = th.cat([param.detach().reshape(-1) for param in model.policy.parameters()])
    draw = th.rand(1)  # after as many draws on every rank
    th.save(dict(parameters=parameters, kfac_steps=model.kfac.n_steps, draw=draw), Path(out) / f"rank_{rank}.pt")
    _leave_ranks()


def test_model_of_one_process_continues_on_several(tmp_path: Path) -> None:
    single = ACKTR("MlpPolicy", make_vec_env("CartPole-v1", n_envs=N_ENVS), n_steps=N_STEPS, seed=0)
    single.learn(2 * N_ENVS * N_STEPS)
    single.save(tmp_path / "single")
    first, second = run_ranks(_continue_single_process_model, tmp_path)
    assert th.equal(first["parameters"], second["parameters"])
    assert first["kfac_steps"] == 3
    assert not th.equal(first["draw"], second["draw"])  # rank 1 did not take the saved random streams of rank 0


def test_acktr_ranks_train_one_model_on_all_rollouts(tmp_path: Path) -> None:
    first, second = run_ranks(_train_acktr, tmp_path)
    assert th.equal(first["parameters"], second["parameters"])  # the same step on every rank
    assert not th.equal(first["observations"], second["observations"])  # from environments seeded apart
    assert first["num_timesteps"] == second["num_timesteps"] == 4 * WORLD_SIZE * N_ENVS * N_STEPS
    assert first["kfac_steps"] == second["kfac_steps"] == 4
    for first_value, second_value in zip(first["obs_rms"], second["obs_rms"], strict=True):
        assert np.array_equal(first_value, second_value)
    # Every observation of both ranks: a reset and N_STEPS steps per update and environment (the last one's reset too).
    assert first["obs_rms"][2] == pytest.approx(1e-4 + WORLD_SIZE * N_ENVS * (1 + 4 * N_STEPS))
    values = th.cat([th.arange(3.0) + 10 * rank for rank in range(WORLD_SIZE)])
    for moments in (first["moments"], second["moments"]):
        assert th.allclose(moments[0], values.mean()) and th.allclose(moments[1], values.std())

    # Saved by rank 0, the model loads in one process and trains on.
    loaded = ACKTR.load(tmp_path / "acktr", env=make_vec_env("CartPole-v1", n_envs=N_ENVS))
    assert loaded._process_group is None
    assert th.equal(th.cat([param.detach().reshape(-1) for param in loaded.policy.parameters()]), first["parameters"])
    loaded.learn(N_ENVS * N_STEPS, reset_num_timesteps=False)
    assert loaded.kfac.n_steps == 5


def test_ranks_agree_on_the_adaptive_step_and_the_critic_steps(tmp_path: Path) -> None:
    first, second = run_ranks(_train_with_adaptive_step_and_critic_steps, tmp_path)
    assert th.equal(first["parameters"], second["parameters"])
    assert first["factor"] == second["factor"] != 1.0  # the KL of every rank's rollouts, joined
    assert first["kfac_steps"] == second["kfac_steps"] == 4


def test_a_callback_stopping_one_rank_stops_all_and_unequal_rollouts_are_refused(tmp_path: Path) -> None:
    first, second = run_ranks(_stop_and_unequal_rollouts, tmp_path)
    assert first["kfac_steps"] == second["kfac_steps"] == 2  # rank 1 stopped in its third rollout, rank 0 with it
    for result in (first, second):
        assert "the same rollout size (n_envs * n_steps) on every rank" in result["error"]


def torchrun(*arguments: str) -> None:
    """Run ``torchrun --standalone`` with two processes on this machine, failing on error or after three minutes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD_SIZE}", *arguments]
    subprocess.run(command, check=True, timeout=180, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_example_trains_under_torchrun_and_rank_0_saves(tmp_path: Path) -> None:
    torchrun("examples/train_distributed.py", "--timesteps", "1600", "--save-dir", str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["final_model.zip"]
    assert ACKTR.load(tmp_path / "final_model").num_timesteps == 1600


def test_zoo_trains_under_torchrun_into_one_log_folder(tmp_path: Path) -> None:
    torchrun("-m", "sb3_acktr.zoo", "train", "--env", "CartPole-v1", "-n", "1280", "-f", str(tmp_path), "--seed", "0")
    (run,) = (tmp_path / "acktr").iterdir()  # rank 1 wrote elsewhere
    assert ACKTR.load(run / "CartPole-v1.zip").num_timesteps == 1280
