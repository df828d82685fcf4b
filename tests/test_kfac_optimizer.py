"""The K-FAC optimizer: trust region, schedules, hygiene, numerics and persistence."""

import copy
import io
import math

import pytest
import torch as th
from torch import nn

from sb3_acktr.kfac import KFAC
from sb3_acktr.kfac.inverses import DampingMode
from sb3_acktr.kfac.optimizer import StatisticsClock, check_device, tensors_finite, trust_region_sums


@pytest.fixture(autouse=True)
def _seed() -> None:
    th.manual_seed(0)


def small_cnn(inplace: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, kernel_size=3, stride=2, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.Tanh(),
        nn.Linear(8, 3),
    )


def gradient(parameter: th.Tensor) -> th.Tensor:
    assert parameter.grad is not None
    return parameter.grad


def fisher_and_loss(model: nn.Module, optimizer: KFAC, inputs: th.Tensor, targets: th.Tensor) -> th.Tensor:
    """One update's forward + Fisher pass; returns the training loss (not yet backpropagated)."""
    with optimizer.capture_statistics():
        logits = model(inputs)
    distribution = th.distributions.Categorical(logits=logits)
    optimizer.update_statistics(-distribution.log_prob(distribution.sample()).sum())
    return -distribution.log_prob(targets).mean()


def full_update(model: nn.Module, optimizer: KFAC, inputs: th.Tensor, targets: th.Tensor) -> th.Tensor:
    loss = fisher_and_loss(model, optimizer, inputs, targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def batch(n: int = 16) -> tuple[th.Tensor, th.Tensor]:
    return th.randn(n, 2, 8, 8), th.randint(0, 3, (n,))


def parameters_vector(model: nn.Module) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_training_reduces_loss() -> None:
    model = small_cnn()
    optimizer = KFAC(model, lr=0.25, kl_clip=0.01, inverse_update_interval=1)
    inputs, targets = batch(32)
    losses = [full_update(model, optimizer, inputs, targets).item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]


def test_trust_region_scale_is_one_when_satisfied_and_binds_otherwise() -> None:
    inputs, targets = batch()
    for lr, clipped in ((1e-4, False), (10.0, True)):
        th.manual_seed(1)
        model = small_cnn()
        optimizer = KFAC(model, lr=lr, momentum=0.0, kl_clip=0.001)
        before = parameters_vector(model)
        full_update(model, optimizer, inputs, targets)
        diagnostics = optimizer.diagnostics()
        scale, vg_sum = diagnostics["trust_region_scale"], diagnostics["vg_sum"]
        if clipped:
            assert scale < 1.0
            assert lr**2 * scale**2 * vg_sum == pytest.approx(0.001, rel=1e-6)
        else:
            assert scale == 1.0
            assert lr**2 * vg_sum < 0.001
        # Without momentum the step is exactly -lr * scale * V, whose <., grad> gives back vg_sum.
        step = parameters_vector(model) - before
        grads = th.cat([gradient(p).reshape(-1) for p in model.parameters()])
        assert float(-(step * grads).sum()) / (lr * scale) == pytest.approx(vg_sum, rel=1e-4)


def test_natural_gradient_inner_is_the_next_steps_vg_sum_and_leaves_grads_alone() -> None:
    model = small_cnn()
    optimizer = KFAC(model, lr=0.25, inverse_update_interval=100)
    inputs, targets = batch()
    full_update(model, optimizer, inputs, targets)  # the first step computes the inverses the next ones reuse
    loss = fisher_and_loss(model, optimizer, inputs, targets)
    optimizer.zero_grad()
    (2 * loss).backward(retain_graph=True)
    grads_before = [gradient(p).clone() for p in model.parameters()]

    inner = optimizer.natural_gradient_inner(loss)

    assert all(th.equal(gradient(p), g) for p, g in zip(model.parameters(), grads_before, strict=True))
    optimizer.zero_grad()
    loss.backward()  # the graph was kept
    optimizer.step()
    assert inner > 0 and inner == pytest.approx(optimizer.diagnostics()["vg_sum"], rel=1e-9)


class TwoHeads(nn.Module):
    """Two heads, one on a trunk and one on the inputs: the second's parameters can get a trust region of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh())
        self.first = nn.Linear(8, 3)
        self.second = nn.Linear(5, 3)

    def forward(self, inputs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.first(self.trunk(inputs)), self.second(inputs)


def two_heads_update(model: TwoHeads, optimizer: KFAC, second_weight: float) -> None:
    inputs, targets = th.randn(16, 5), th.randint(0, 3, (16,))
    with optimizer.capture_statistics():
        first, second = model(inputs)
    distributions = [th.distributions.Categorical(logits=logits) for logits in (first, second)]
    optimizer.update_statistics(sum(-d.log_prob(d.sample()).sum() for d in distributions))
    loss = -distributions[0].log_prob(targets).mean() - second_weight * distributions[1].log_prob(targets).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_separate_trust_regions_bind_independently() -> None:
    model = TwoHeads()
    joint_model = copy.deepcopy(model)
    second = list(model.second.parameters())
    optimizer = KFAC(
        model, lr=10.0, momentum=0.0, kl_clip=0.001, trust_regions=[dict(name="second", params=second, kl_clip=0.1)]
    )
    joint = KFAC(joint_model, lr=10.0, momentum=0.0, kl_clip=0.001)
    assert [len(group["params"]) for group in optimizer.param_groups] == [4, 2]
    before = [p.detach().clone() for p in second]
    th.manual_seed(3)
    two_heads_update(model, optimizer, second_weight=1000.0)
    th.manual_seed(3)
    two_heads_update(joint_model, joint, second_weight=1000.0)
    diagnostics = optimizer.diagnostics()
    for prefix, kl_clip in (("", 0.001), ("second/", 0.1)):
        scale, vg_sum = diagnostics[f"{prefix}trust_region_scale"], diagnostics[f"{prefix}vg_sum"]
        assert scale < 1.0
        assert 10.0**2 * scale**2 * vg_sum == pytest.approx(kl_clip, rel=1e-6)
    # Each group steps by -lr * its own scale * V ...
    step = th.cat([(p.detach() - b).reshape(-1) for p, b in zip(second, before, strict=True)])
    grads = th.cat([gradient(p).reshape(-1) for p in second])
    scale = diagnostics["second/trust_region_scale"]
    assert float(-(step * grads).sum()) / (10.0 * scale) == pytest.approx(diagnostics["second/vg_sum"], rel=1e-4)
    # ... so the second head's large gradient no longer shrinks the step of the rest, as it does in a joint region.
    joint_diagnostics = joint.diagnostics()
    assert joint_diagnostics["vg_sum"] == pytest.approx(diagnostics["vg_sum"] + diagnostics["second/vg_sum"], rel=1e-5)
    assert diagnostics["trust_region_scale"] > 10 * joint_diagnostics["trust_region_scale"]


@pytest.mark.parametrize(
    "regions, message",
    [
        ([dict(params=[])], "needs 'params' and a 'name'"),
        ([dict(name="x", params=[], lr=1.0)], "needs 'params' and a 'name'"),
        ([dict(name="x", params=[nn.Parameter(th.zeros(1))])], "not a trainable model parameter"),
        ([dict(name="x", params="second"), dict(name="y", params="second")], "in two trust regions"),
        ([dict(name="x", params="weight only")], "weight and bias of layer 'second'"),
        ([dict(name="x", params="all")], "cover every parameter"),
        ([dict(name="x", params="second", kl_clip=0.0)], "kl_clip of trust region 'x'"),
        ([dict(name="x", params="second"), dict(name="x", params=[])], "Two trust regions are named 'x'"),
    ],
)
def test_invalid_trust_regions_are_named(regions: list[dict], message: str) -> None:
    model = TwoHeads()
    named = {"second": list(model.second.parameters()), "weight only": [model.second.weight], "all": list(model.parameters())}
    regions = [
        dict(region, params=named[region["params"]]) if isinstance(region.get("params"), str) else region for region in regions
    ]
    with pytest.raises(ValueError, match=message):
        KFAC(model, trust_regions=regions)


def test_zero_gradient_and_zero_learning_rate_are_safe() -> None:
    model = small_cnn()
    optimizer = KFAC(model, lr=0.0, momentum=0.0)
    inputs, targets = batch()
    before = parameters_vector(model)
    full_update(model, optimizer, inputs, targets)
    assert th.equal(parameters_vector(model), before)
    assert optimizer.diagnostics()["trust_region_scale"] == 1.0
    optimizer.param_groups[0]["lr"] = 0.1
    optimizer.zero_grad(set_to_none=False)
    optimizer.step()
    assert th.equal(parameters_vector(model), before)
    assert optimizer.counters["skipped_steps"] == 0


def test_learning_rate_is_read_from_param_group_each_step() -> None:
    inputs, targets = batch()
    steps = []
    for lr in (0.01, 0.02):
        th.manual_seed(2)
        model = small_cnn()
        optimizer = KFAC(model, lr=1.0, momentum=0.0, kl_clip=1e6)
        optimizer.param_groups[0]["lr"] = lr
        before = parameters_vector(model)
        full_update(model, optimizer, inputs, targets)
        steps.append(parameters_vector(model) - before)
    assert th.allclose(steps[1], 2 * steps[0], rtol=1e-4, atol=1e-8)


def test_fisher_pass_leaves_grad_untouched_and_keeps_graph() -> None:
    model = small_cnn()
    optimizer = KFAC(model)
    for p in model.parameters():
        p.grad = th.full_like(p, 3.0)
    inputs, targets = batch()
    loss = fisher_and_loss(model, optimizer, inputs, targets)
    assert all(th.equal(gradient(p), th.full_like(p, 3.0)) for p in model.parameters())
    loss.backward()  # the graph survived the Fisher pass
    assert not all(th.equal(gradient(p), th.full_like(p, 3.0)) for p in model.parameters())


def test_no_statistics_without_capture_or_under_no_grad() -> None:
    model = small_cnn()
    optimizer = KFAC(model)
    inputs, _ = batch()
    with th.no_grad(), optimizer.capture_statistics():
        model(inputs)
    logits = model(inputs)  # outside the context
    assert not optimizer.update_statistics(logits.sum())
    assert all(optimizer.factors(block) is None for block in optimizer.blocks)
    assert optimizer.state_dict()["state"] == {}


def test_in_place_activation_gives_same_statistics() -> None:
    inputs, targets = batch()
    factors = []
    for inplace in (False, True):
        th.manual_seed(3)
        model = small_cnn(inplace=inplace)
        optimizer = KFAC(model, stats_decay=0.0)
        th.manual_seed(4)
        fisher_and_loss(model, optimizer, inputs, targets)
        factors.append([optimizer.factors(block) for block in optimizer.blocks])
    for first, second in zip(factors[0], factors[1], strict=True):
        assert first is not None and second is not None
        assert th.equal(first[0], second[0])
        assert th.equal(first[1], second[1])


@pytest.mark.parametrize("interval", [1, 4])
def test_statistics_every_few_steps_keep_the_horizon_in_steps(interval: int) -> None:
    """Statistics every ``interval`` steps decay the averages by ``stats_decay ** interval`` (the same span in steps)."""
    model = small_cnn()
    optimizer = KFAC(model, stats_decay=0.9, stats_update_interval=interval)
    batches = [batch() for _ in range(3)]
    for inputs, _ in batches:
        with optimizer.capture_statistics():
            logits = model(inputs)
        optimizer.update_statistics(logits.pow(2).sum())
    block = optimizer.blocks[-1]
    rows = [th.nn.functional.pad(model[:-1](inputs), (0, 1), value=1.0) for inputs, _ in batches]
    batch_factors = [row.T @ row / len(row) for row in rows]
    decay = 0.9**interval
    expected = sum(decay ** (2 - index) * (1 - decay) * factor for index, factor in enumerate(batch_factors))
    factors = optimizer.factors(block)
    assert factors is not None
    th.testing.assert_close(factors[0], expected / (1 - decay**3))


class MixedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, kernel_size=3, padding=1)
        self.grouped = nn.Conv2d(4, 4, kernel_size=3, padding=1, groups=2)
        self.norm = nn.LayerNorm(4 * 8 * 8)
        self.head = nn.Linear(4 * 8 * 8, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.log_std = nn.Parameter(th.zeros(3))

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.frozen(self.head(self.norm(self.grouped(self.conv(x)).flatten(1)))) + self.log_std


def test_uncovered_parameters_are_listed_and_get_their_plain_gradient() -> None:
    model = MixedModel()
    optimizer = KFAC(model, momentum=0.0, lr=0.1, kl_clip=1e6)
    assert set(optimizer.uncovered_parameters) == {"log_std", "grouped.weight", "grouped.bias", "norm.weight", "norm.bias"}
    assert {block.name for block in optimizer.blocks} == {"conv", "head"}
    before = model.log_std.detach().clone()
    full_update(model, optimizer, *batch())
    assert th.allclose(model.log_std.detach(), before - 0.1 * gradient(model.log_std))


def test_frozen_bias_stays_frozen() -> None:
    model = small_cnn()
    bias = model[3].get_parameter("bias")
    bias.requires_grad_(False)
    frozen = bias.detach().clone()
    optimizer = KFAC(model, inverse_update_interval=1)
    for _ in range(2):
        full_update(model, optimizer, *batch())
    assert th.equal(bias.detach(), frozen)
    assert optimizer.uncovered_parameters == []


class ModelHoldingItsOptimizer(nn.Sequential):
    """A model that holds its optimizer, as SB3 policies do."""

    optimizer: KFAC


def test_deep_copied_model_keeps_a_working_optimizer() -> None:
    model = ModelHoldingItsOptimizer(*small_cnn())
    optimizer = KFAC(model, async_inverse=True)
    model.optimizer = optimizer
    full_update(model, optimizer, *batch())
    clone = copy.deepcopy(model)
    assert clone.optimizer is not optimizer and clone.optimizer.blocks[0].module is clone[0]
    full_update(clone, clone.optimizer, *batch())
    assert th.isfinite(parameters_vector(clone)).all()
    assert clone.optimizer.n_steps == 2 and optimizer.n_steps == 1


def test_module_called_twice_is_rejected_with_its_name() -> None:
    layer = nn.Linear(3, 3)
    optimizer = KFAC(nn.Sequential(layer))
    with pytest.raises(RuntimeError, match="'0' was called more than once"), optimizer.capture_statistics():
        layer(layer(th.randn(2, 3)))


def test_cached_inverses_equal_fresh_ones_at_refresh_steps() -> None:
    inputs, targets = batch()
    directions: dict[int, list[th.Tensor]] = {}
    for interval in (1, 3):
        th.manual_seed(5)
        model = small_cnn()
        optimizer = KFAC(model, lr=0.0, inverse_update_interval=interval)
        directions[interval] = []
        for _ in range(4):
            full_update(model, optimizer, inputs, targets)
            directions[interval].append(th.cat([d.natural.reshape(-1) for d in optimizer._natural_gradients()]))
    assert th.equal(directions[1][0], directions[3][0])
    assert not th.allclose(directions[1][1], directions[3][1])
    assert th.equal(directions[1][3], directions[3][3])


@pytest.mark.parametrize("damping_mode", ["exact", "factored"])
def test_state_dict_round_trip_reproduces_the_step_bit_for_bit(damping_mode: DampingMode) -> None:
    inputs, targets = batch()
    model = small_cnn()
    optimizer = KFAC(model, damping_mode=damping_mode, inverse_update_interval=3)
    for _ in range(4):
        full_update(model, optimizer, inputs, targets)
    buffer = io.BytesIO()
    th.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = th.load(buffer, weights_only=True)

    th.manual_seed(6)
    full_update(model, optimizer, inputs, targets)
    expected = parameters_vector(model)

    clone = small_cnn()
    clone.load_state_dict(saved["model"])
    clone_optimizer = KFAC(clone, damping_mode=damping_mode, inverse_update_interval=3)
    clone_optimizer.load_state_dict(saved["optimizer"])
    th.manual_seed(6)
    full_update(clone, clone_optimizer, inputs, targets)
    assert th.equal(parameters_vector(clone), expected)


def test_non_finite_gradient_skips_the_step_and_is_counted() -> None:
    model = small_cnn()
    optimizer = KFAC(model)
    full_update(model, optimizer, *batch())
    before = parameters_vector(model)
    for p in model.parameters():
        p.grad = th.full_like(p, math.nan)
    optimizer.step()
    assert th.equal(parameters_vector(model), before)
    assert optimizer.counters["skipped_steps"] == 1


def test_non_finite_input_is_survived() -> None:
    model = small_cnn()
    optimizer = KFAC(model)
    inputs, targets = batch()
    full_update(model, optimizer, inputs, targets)
    before = parameters_vector(model)
    bad_inputs = inputs.clone()
    bad_inputs[0, 0, 0, 0] = math.inf
    with optimizer.capture_statistics():
        logits = model(bad_inputs)
    assert not optimizer.update_statistics(logits.sum())
    optimizer.zero_grad()
    logits.sum().backward()
    optimizer.step()
    assert th.equal(parameters_vector(model), before)
    assert optimizer.counters["nonfinite_statistics"] == 1
    assert optimizer.counters["skipped_steps"] == 1
    full_update(model, optimizer, inputs, targets)  # training goes on
    assert th.isfinite(parameters_vector(model)).all()
    assert not th.equal(parameters_vector(model), before)


@pytest.mark.parametrize("damping_mode, decomposition", [("exact", "eigh"), ("factored", "cholesky")])
def test_singular_factors_fall_back_to_float64_or_last_good_inverse(
    monkeypatch: pytest.MonkeyPatch, damping_mode: DampingMode, decomposition: str
) -> None:
    model = small_cnn()
    optimizer = KFAC(model, inverse_update_interval=1, damping_mode=damping_mode)
    inputs, targets = batch()
    full_update(model, optimizer, inputs, targets)
    real_decomposition = getattr(th.linalg, decomposition)

    def failing_in_float32(matrix: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        if matrix.dtype == th.float32:
            raise th.linalg.LinAlgError("simulated failure")
        return real_decomposition(matrix)

    monkeypatch.setattr(th.linalg, decomposition, failing_in_float32)
    full_update(model, optimizer, inputs, targets)
    assert optimizer.counters["float64_retries"] == 2 * len(optimizer.blocks)
    assert optimizer.counters["inverse_failures"] == 0
    last_good = dict(optimizer._inverses)

    def always_failing(matrix: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        raise th.linalg.LinAlgError("simulated failure")

    monkeypatch.setattr(th.linalg, decomposition, always_failing)
    before = parameters_vector(model)
    full_update(model, optimizer, inputs, targets)
    assert optimizer.counters["inverse_failures"] == len(optimizer.blocks)
    assert all(optimizer._inverses[block] is last_good[block] for block in optimizer.blocks)  # kept, and used
    assert th.isfinite(parameters_vector(model)).all() and not th.equal(parameters_vector(model), before)


def test_a_block_that_never_decomposes_is_retried_at_each_refresh_not_each_step(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_cnn()
    optimizer = KFAC(model, inverse_update_interval=3)
    failing = optimizer.blocks[0]
    real_eigh, calls = th.linalg.eigh, {"failing": 0, "all": 0}

    def eigh_failing_for_one_block(matrix: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        calls["all"] += 1
        if matrix.shape[0] == failing.weight[0].numel() + 1:  # the first convolution's input factor
            calls["failing"] += 1
            raise th.linalg.LinAlgError("simulated failure")
        return real_eigh(matrix)

    monkeypatch.setattr(th.linalg, "eigh", eigh_failing_for_one_block)
    inputs, targets = batch()
    for _ in range(7):  # refreshes at steps 1, 4 and 7
        full_update(model, optimizer, inputs, targets)
    assert optimizer.counters["inverse_failures"] == 3
    assert calls["failing"] == 3 * 2  # float32, then float64, at each refresh
    assert failing not in optimizer._inverses and len(optimizer._inverses) == len(optimizer.blocks) - 1
    assert th.isfinite(parameters_vector(model)).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-1.0), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(kl_clip=0.0), "kl_clip"),
        (dict(damping=-0.1), "damping"),
        (dict(damping="big"), "damping"),
        (dict(stats_decay=1.0), "stats_decay"),
        (dict(damping_mode="diagonal"), "damping_mode"),
        (dict(conv_mode="sum"), "conv_mode"),
        (dict(inverse_update_interval=0), "inverse_update_interval"),
        (dict(stats_update_interval=2.5), "stats_update_interval"),
    ],
)
def test_invalid_hyperparameters_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        KFAC(small_cnn(), **kwargs)


def test_async_inverse_refresh_installs_new_inverses() -> None:
    model = small_cnn()
    optimizer = KFAC(model, inverse_update_interval=1, async_inverse=True)
    inputs, targets = batch()
    full_update(model, optimizer, inputs, targets)  # first inverses: synchronous
    first = {block: inverse for block, inverse in optimizer._inverses.items()}
    full_update(model, optimizer, inputs, targets)  # submits a refresh
    assert optimizer._inverse_future is not None
    optimizer._inverse_future.result()
    full_update(model, optimizer, inputs, targets)  # installs it
    assert all(optimizer._inverses[block] is not first[block] for block in first)
    assert th.isfinite(parameters_vector(model)).all()


def test_out_of_memory_in_a_decomposition_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a numerical failure: neither retried in float64 nor counted as a failed inverse."""
    model = small_cnn()
    optimizer = KFAC(model, inverse_update_interval=1)
    inputs, targets = batch()

    def eigh_out_of_memory(matrix: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        raise th.OutOfMemoryError("simulated out of memory")

    monkeypatch.setattr(th.linalg, "eigh", eigh_out_of_memory)
    with pytest.raises(th.OutOfMemoryError):
        full_update(model, optimizer, inputs, targets)
    assert optimizer.counters["float64_retries"] == optimizer.counters["inverse_failures"] == 0


class FakeCudaEvent:
    """Stands for ``torch.cuda.Event``: finished once ``done`` is set, at ``time`` milliseconds."""

    clock_ms = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        self.done = False
        self.time = 0.0

    def record(self) -> None:
        FakeCudaEvent.clock_ms += 250.0
        self.time = FakeCudaEvent.clock_ms

    def query(self) -> bool:
        return self.done

    def elapsed_time(self, end: "FakeCudaEvent") -> float:
        return end.time - self.time


def test_statistics_seconds_on_cuda_count_finished_kernels_without_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th.cuda, "Event", FakeCudaEvent)
    clock = StatisticsClock()
    started = clock.start(th.device("cuda"))
    clock.stop(started)
    pending = clock.start(th.device("cuda"))
    clock.stop(pending)
    first, second = clock._events
    assert clock.take() == 0.0  # nothing finished: nothing waited for, nothing lost
    first[1].done = True
    assert clock.take() == pytest.approx(0.25)
    second[1].done = True
    assert clock.take() == pytest.approx(0.25) and clock.take() == 0.0


def test_statistics_seconds_on_cpu() -> None:
    model = small_cnn()
    optimizer = KFAC(model)
    inputs, targets = batch()
    full_update(model, optimizer, inputs, targets)
    assert optimizer.diagnostics()["statistics_seconds"] > 0.0
    assert optimizer.diagnostics()["statistics_seconds"] == 0.0


def test_devices_without_float64_are_refused() -> None:
    with pytest.raises(ValueError, match="MPS"):
        check_device(th.device("mps"))
    check_device(th.device("cpu"))


def test_trust_region_sums_are_finite_exactly_when_directions_and_gradients_are() -> None:
    large = th.full((2, 2), 3e38)  # <V, grad> overflows float32 but not float64
    ones = th.ones(2)
    sums = trust_region_sums([[(large, large), (ones, ones)], [(ones, ones)], []])
    assert sums == [4 * float(large[0, 0]) ** 2 + 2.0, 2.0, 0.0]
    for bad in (float("nan"), float("inf")):
        natural = th.tensor([[bad, 0.0], [0.0, 0.0]])
        # A non-finite direction where the gradient is zero still makes the sum non-finite.
        sums = trust_region_sums([[(natural, th.zeros(2, 2))], [(ones, ones)]])
        assert not math.isfinite(sums[0]) and sums[1] == 2.0


def test_all_finite_checks_every_element_without_float32_overflow() -> None:
    assert tensors_finite([th.full((3,), 3e38), th.ones(2)])
    assert tensors_finite([])
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not tensors_finite([th.ones(2), th.tensor([1.0, bad])])
