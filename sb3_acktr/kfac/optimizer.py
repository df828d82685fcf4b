"""
K-FAC preconditioned momentum SGD with a KL trust region, as used by ACKTR (Wu et al., 2017).

Usage, once per update::

    optimizer = KFAC(model, lr=0.25)
    with optimizer.capture_statistics(enabled=optimizer.statistics_due()):
        outputs = model(inputs)                     # forward hooks record layer inputs
    if optimizer.statistics_due():
        optimizer.update_statistics(fisher_loss)    # sum over the batch of -log p(sampled target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""

import math
import numbers
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Any, NamedTuple

import torch as th
import torch.distributed as dist
from torch import nn

from sb3_acktr.kfac.blocks import ConvMode, KroneckerBlock, is_supported_layer
from sb3_acktr.kfac.inverses import BlockInverse, DampingMode, InverseFailure, compute_inverse, symmetrize

COUNTER_NAMES = ("skipped_steps", "nonfinite_statistics", "float64_retries", "inverse_failures")
AVERAGE_KEYS = ("A_average", "G_average")
# Where a block's saved state keeps what its inverse is recomputed from ("inverse": version 0.4.0 and earlier).
SAVED_INVERSE_KEYS = ("inverse_factors", "inverse")


def check_number(name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False) -> None:
    """
    Raise a ``TypeError`` or ``ValueError`` naming ``name`` unless ``value`` is a finite real number (Python or NumPy)
    within the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {bounds}, got {value}")


def check_device(device: th.device) -> None:
    """Refuse devices without float64, which the trust-region sums and the inverses' fallback need."""
    if device.type == "mps":
        raise ValueError(
            "K-FAC needs float64 arithmetic (trust-region sums, inverses that fail in float32), which MPS devices do not "
            "have: use device='cpu' (or a CUDA device)"
        )


def check_integer(name: str, value: Any, minimum: int = 1) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value!r}")


def check_hyperparameters(
    momentum: float,
    kl_clip: float,
    damping: float,
    stats_decay: float,
    damping_mode: str,
    conv_mode: str,
    stats_update_interval: int,
    inverse_update_interval: int,
    patches_per_feature: int | None = None,
) -> None:
    """Raise a ``ValueError`` or ``TypeError`` naming the first invalid K-FAC hyperparameter."""
    check_number("momentum", momentum, 0.0, 1.0, high_open=True)
    check_number("kl_clip", kl_clip, 0.0, math.inf, low_open=True)
    check_number("damping", damping, 0.0, math.inf, low_open=True)
    check_number("stats_decay", stats_decay, 0.0, 1.0, high_open=True)
    if damping_mode not in ("exact", "factored"):
        raise ValueError(f"damping_mode must be 'exact' or 'factored', got {damping_mode!r}")
    if conv_mode not in ("expand", "reduce"):
        raise ValueError(f"conv_mode must be 'expand' or 'reduce', got {conv_mode!r}")
    check_integer("stats_update_interval", stats_update_interval)
    check_integer("inverse_update_interval", inverse_update_interval)
    if patches_per_feature is not None:
        check_integer("patches_per_feature", patches_per_feature)


def pack_symmetric(matrix: th.Tensor) -> th.Tensor:
    """The upper triangle (row by row) of an exactly symmetric matrix, or the matrix itself when it is not symmetric."""
    if matrix.dim() != 2 or not th.equal(matrix, matrix.T):
        return matrix
    rows, columns = th.triu_indices(*matrix.shape, device=matrix.device)
    return matrix[rows, columns]


def unpack_symmetric(tensor: th.Tensor) -> th.Tensor:
    """Inverse of :func:`pack_symmetric`: the symmetric matrix of an upper triangle (a matrix is returned as it is)."""
    if tensor.dim() != 1:
        return tensor
    size = round((math.sqrt(8 * tensor.numel() + 1) - 1) / 2)
    rows, columns = th.triu_indices(size, size, device=tensor.device)
    matrix = tensor.new_empty(size, size)
    matrix[rows, columns] = tensor
    matrix[columns, rows] = tensor
    return matrix


def all_reduce_mean(tensors: Sequence[th.Tensor], process_group: Any) -> list[th.Tensor]:
    """
    The means of ``tensors`` over the ranks of ``process_group``: new tensors shaped like them, flattened into one buffer
    per dtype for one all-reduce each (a sum divided by the world size: gloo has no average).
    """
    world_size = dist.get_world_size(process_group)
    by_dtype: dict[th.dtype, list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(index)
    joined: list[th.Tensor] = list(tensors)
    for indices in by_dtype.values():
        buffer = th.cat([tensors[index].reshape(-1) for index in indices])
        dist.all_reduce(buffer, group=process_group)
        buffer /= world_size
        for index, part in zip(indices, buffer.split([tensors[index].numel() for index in indices]), strict=True):
            joined[index] = part.view_as(tensors[index])
    return joined


def assign_by_cost(factors: dict[KroneckerBlock, tuple[th.Tensor, th.Tensor]], world_size: int) -> dict[KroneckerBlock, int]:
    """The rank that decomposes each block: largest first (cost ``dim A^3 + dim G^3``), to the least loaded rank."""
    owners, loads = {}, [0] * world_size
    for block in sorted(factors, key=lambda block: -sum(f.shape[0] ** 3 for f in factors[block])):
        owners[block] = loads.index(min(loads))
        loads[owners[block]] += sum(f.shape[0] ** 3 for f in factors[block])
    return owners


def tensors_finite(tensors: Sequence[th.Tensor]) -> bool:
    """
    Whether every element of every tensor is finite, with one host round-trip when they are. The norms in the tensors'
    dtype are finite when every element is and nothing overflows; only when they are not are the norms taken again in
    float64, where the squares of float32 (or smaller) elements cannot overflow, so that they are finite exactly when the
    elements are.
    """
    if not tensors:
        return True
    if bool(th.stack(th._foreach_norm(list(tensors), 2)).sum().isfinite()):
        return True
    return bool(th.stack(th._foreach_norm(list(tensors), 2, dtype=th.float64)).sum().isfinite())


class StatisticsClock:
    """
    Seconds spent computing curvature statistics. On CUDA the kernels run asynchronously, so the host's clock would
    time their launch: there a pair of CUDA events brackets each computation, and :meth:`take` reads the pairs that
    have completed without waiting for the others (no synchronisation).
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._events: list[tuple[Any, Any]] = []

    def start(self, device: th.device) -> Any:
        if device.type == "cuda":
            event = th.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def stop(self, started: Any) -> None:
        if isinstance(started, float):
            self.seconds += time.perf_counter() - started
            return
        end = th.cuda.Event(enable_timing=True)
        end.record()
        self._events.append((started, end))

    def take(self) -> float:
        """The seconds measured since the last call (on CUDA: of the computations finished by now)."""
        finished = [(start, end) for start, end in self._events if end.query()]
        self._events = [pair for pair in self._events if pair not in finished]
        seconds = self.seconds + sum(start.elapsed_time(end) for start, end in finished) / 1000.0
        self.seconds = 0.0
        return seconds


class Direction(NamedTuple):
    """
    The step direction ``V`` and the gradient of the parameters of one block (as its matrix ``M``), or of one parameter
    that no block covers (``block`` None, ``V`` the gradient itself).
    """

    params: list[th.Tensor]
    natural: th.Tensor
    grad: th.Tensor
    block: KroneckerBlock | None = None

    def naturals(self) -> list[th.Tensor]:
        """``V`` of each parameter, shaped like it."""
        return self.block.split_matrix(self.natural) if self.block is not None else [self.natural]


def trust_region_sums(groups: Sequence[Sequence[tuple[th.Tensor, th.Tensor]]]) -> list[float]:
    """
    ``sum <V, grad>`` over each group of ``(V, grad)`` pairs, in float64 (with badly scaled rewards it can overflow
    float32 where the step itself would not), with one host round-trip. Products of float32 numbers cannot overflow
    float64, so a sum is finite exactly when the group's ``V`` and gradients are (a non-finite ``V`` times a zero
    gradient is NaN).
    """
    sums = [
        th.vdot(th.cat([v.flatten() for v, _ in pairs]).double(), th.cat([g.flatten() for _, g in pairs]).double())
        for pairs in groups
        if pairs
    ]
    values = iter(th.stack(sums).tolist() if sums else [])
    return [next(values) if pairs else 0.0 for pairs in groups]


def _split_into_groups(params: Sequence[th.Tensor], trust_regions: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One param group for the parameters of no listed trust region, then one per listed trust region."""
    trainable = {id(p) for p in params}
    owner: dict[int, str] = {}
    groups: list[dict[str, Any]] = []
    for region in trust_regions:
        unknown = set(region) - {"params", "name", "kl_clip"}
        if unknown or "params" not in region or not region.get("name"):
            raise ValueError(f"A trust region needs 'params' and a 'name' (and may set 'kl_clip'), got keys {sorted(region)}")
        if any(group["name"] == region["name"] for group in groups):
            raise ValueError(f"Two trust regions are named {region['name']!r}")
        if "kl_clip" in region:
            check_number(f"kl_clip of trust region {region['name']!r}", region["kl_clip"], 0.0, math.inf, low_open=True)
        region_params = list(region["params"])
        for param in region_params:
            if id(param) not in trainable:
                raise ValueError(f"Trust region {region['name']!r} lists a parameter that is not a trainable model parameter")
            if id(param) in owner:
                raise ValueError(f"A parameter is in two trust regions: {owner[id(param)]!r} and {region['name']!r}")
            owner[id(param)] = region["name"]
        groups.append(dict(region, params=region_params))
    rest = [p for p in params if id(p) not in owner]
    if not rest:
        raise ValueError("The trust regions cover every parameter: leave some to the shared trust region")
    return [{"params": rest}, *groups]


class KFAC(th.optim.Optimizer):
    """
    Kronecker-factored approximate curvature (Martens & Grosse, 2015; Grosse & Martens, 2016 for convolutions)
    for every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, with the trust region and momentum of ACKTR.

    The step is ``V = (F + damping)^-1 grad`` per layer, scaled by
    ``nu = min(1, sqrt(kl_clip / (lr^2 * sum <V, grad>)))`` over all parameters (over each of ``trust_regions`` and
    the remaining parameters separately, when given), then applied with momentum SGD
    (``buf = momentum * buf + nu * V``, ``p -= lr * (1 - momentum) * buf``), as in the reference implementations.
    Parameters outside supported layers (``log_std``, norm layers, grouped convolutions, ...) are *uncovered*:
    their raw gradient is used and enters the trust-region sum. See :attr:`uncovered_parameters`.

    :param model: the module whose parameters are optimised; it is not modified (forward hooks only)
    :param lr: learning rate (read from the param group at every step, so schedules apply); 0 is allowed
    :param momentum: momentum coefficient in [0, 1)
    :param kl_clip: trust-region bound on ``lr^2 * sum <V, grad>`` (twice the KL bound of the paper)
    :param damping: Tikhonov damping added to the Kronecker-factored Fisher
    :param stats_decay: decay per step of the running averages of the factors (zero-debiased, as in kfac-jax); with
        statistics every ``stats_update_interval`` steps, each update of the averages decays them by
        ``stats_decay ** stats_update_interval`` (as TF K-FAC does), so that they span the same number of steps
    :param damping_mode: ``"exact"`` (eigendecompositions) or ``"factored"`` (pi-adjusted, Cholesky inverses)
    :param conv_mode: ``"expand"`` (KFC) or ``"reduce"`` statistics for convolutions
    :param patches_per_feature: in expand mode, estimate each convolution's input factor from at most this many of
        the batch's patches per input feature (``in_channels * kh * kw``), drawn at random; None: from every patch
    :param stats_update_interval: update the factors every this many steps
    :param inverse_update_interval: refresh the inverses every this many steps
    :param async_inverse: refresh the inverses in a background thread; the step keeps the previous inverses until
        the new ones are ready (non-deterministic timing)
    :param trust_regions: parameters that get a trust region of their own, instead of sharing the one of all other
        parameters: a list of dicts with ``params``, ``name`` and optionally ``kl_clip`` (default: ``kl_clip``).
        Each becomes a param group; a layer's weight and bias must stay together. ACKTR uses it for the critic.
    :param process_group: data parallelism (``torch.distributed``): each rank of this group holds an equal share of the
        batch, and each step joins the ranks' gradients and new factors with one all-reduce (their means), so that
        every rank takes the same step as one process on the whole batch would. The ranks' models must start equal.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.25,
        momentum: float = 0.9,
        kl_clip: float = 0.001,
        damping: float = 0.01,
        stats_decay: float = 0.99,
        damping_mode: DampingMode = "exact",
        conv_mode: ConvMode = "expand",
        patches_per_feature: int | None = 4,
        stats_update_interval: int = 1,
        inverse_update_interval: int = 10,
        async_inverse: bool = False,
        trust_regions: Sequence[dict[str, Any]] = (),
        process_group: Any | None = None,
    ) -> None:
        check_number("lr", lr, 0.0, math.inf)
        if process_group is not None and async_inverse:
            raise ValueError(
                "async_inverse cannot be used with a process_group: each rank would install its new inverses at another "
                "step and the ranks' parameters would drift apart"
            )
        check_hyperparameters(
            momentum=momentum,
            kl_clip=kl_clip,
            damping=damping,
            stats_decay=stats_decay,
            damping_mode=damping_mode,
            conv_mode=conv_mode,
            stats_update_interval=stats_update_interval,
            inverse_update_interval=inverse_update_interval,
            patches_per_feature=patches_per_feature,
        )

        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("The model has no trainable parameters")
        check_device(params[0].device)
        defaults = dict(lr=lr, momentum=momentum, kl_clip=kl_clip, damping=damping, name="")
        super().__init__(_split_into_groups(params, trust_regions), defaults)

        self.stats_decay = stats_decay
        self.damping_mode: DampingMode = damping_mode
        self.conv_mode: ConvMode = conv_mode
        self.stats_update_interval = stats_update_interval
        self.inverse_update_interval = inverse_update_interval
        self.async_inverse = async_inverse
        self.process_group = process_group

        self.blocks: list[KroneckerBlock] = []
        self._hooks = []
        for name, module in model.named_modules():
            trainable = module.weight.requires_grad if isinstance(module, (nn.Linear, nn.Conv2d)) else False
            if is_supported_layer(module) and trainable:
                block = KroneckerBlock(name or type(module).__name__, module, conv_mode, patches_per_feature)
                self.blocks.append(block)
                self._hooks.append(module.register_forward_hook(partial(self._record_input, block)))
        covered = {id(p) for block in self.blocks for p in block.parameters}
        names = {id(p): name for name, p in model.named_parameters()}
        self.uncovered_parameters: list[str] = [names[id(p)] for p in params if id(p) not in covered]
        # The param group of each parameter: the groups are fixed once built (a new layout builds a new optimizer).
        self._group_index = {param: index for index, group in enumerate(self.param_groups) for param in group["params"]}
        self._check_blocks_within_groups()

        self._capturing = False
        self._collecting_gradients = False
        self._pending: dict[KroneckerBlock, dict[str, tuple[th.Tensor, int]]] = {}
        self._outputs: dict[KroneckerBlock, tuple[th.Tensor, int]] = {}
        self._shared_inputs: dict[tuple, tuple[th.Tensor, tuple[th.Tensor, int]]] = {}
        self._inverses: dict[KroneckerBlock, BlockInverse] = {}
        self._failed_blocks: set[KroneckerBlock] = set()
        self._saved_inverse_factors: dict[KroneckerBlock, tuple[th.Tensor, th.Tensor]] = {}
        self._unjoined_statistics: list[tuple[KroneckerBlock, dict[str, tuple[th.Tensor, int]]]] = []
        self._executor: ThreadPoolExecutor | None = None
        self._inverse_future: Future | None = None
        self.n_steps = 0
        self.inverse_age = 0
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)
        self.consecutive_skipped_steps = 0
        self._last: dict[str, float] = {
            f"{prefix}{key}": float("nan") for prefix in self._group_prefixes() for key in ("trust_region_scale", "vg_sum")
        }
        self._statistics_clock = StatisticsClock()
        self._inverse_seconds = 0.0

    # ------------------------------------------------------------------ statistics
    @property
    def statistics_decay(self) -> float:
        """
        The decay applied at each statistics update: ``stats_decay`` per step, so ``stats_decay ** stats_update_interval``
        when the statistics are updated every few steps. The averages then span about ``1 / (1 - stats_decay)`` steps
        whatever the interval: factors averaged over more steps lag behind a policy whose curvature changes (a Gaussian
        policy's output factor grows as its standard deviation shrinks), and the trust region, computed with them,
        then admits steps whose true KL exceeds the bound.
        """
        return self.stats_decay**self.stats_update_interval

    def statistics_due(self) -> bool:
        """Whether the coming step should update the curvature statistics (every ``stats_update_interval`` steps)."""
        return self.n_steps % self.stats_update_interval == 0

    @contextmanager
    def capture_statistics(self, enabled: bool = True) -> Iterator[None]:
        """
        Record the inputs of the covered layers during the forward passes run inside this context (with grad
        enabled only: ``no_grad`` forwards never touch the statistics). Follow with :meth:`update_statistics`.
        """
        self._pending, self._outputs, self._shared_inputs = {}, {}, {}
        self._capturing = enabled
        try:
            yield
        finally:
            self._capturing = False
            self._shared_inputs = {}

    def _record_input(self, block: KroneckerBlock, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not self._capturing or not th.is_grad_enabled():
            return
        if block in self._pending:
            raise RuntimeError(
                f"Layer '{block.name}' was called more than once in one forward pass: K-FAC models each layer "
                "once per pass. Use separate modules, or exclude this one from the optimizer's model."
            )
        started = self._statistics_clock.start(inputs[0].device)
        self._pending[block] = {"A": self._activation_outer(block, inputs[0])}
        self._statistics_clock.stop(started)
        if isinstance(output, th.Tensor) and output.requires_grad:
            # A tensor hook sees the gradient of this version of the output, even if an in-place
            # activation modifies it later.
            output.register_hook(partial(self._record_output_gradient, block))
            self._outputs[block] = (output, output._version)

    def _activation_outer(self, block: KroneckerBlock, inputs: th.Tensor) -> tuple[th.Tensor, int]:
        """
        The block's activation outer products, computed once for the layers that read the same input (the first layers
        of separate actor and critic networks). The input is kept with them, so that its id is not reused.
        """
        key = (id(inputs), block.activation_key)
        if key not in self._shared_inputs:
            with th.no_grad():
                self._shared_inputs[key] = (inputs, block.activation_outer(inputs))
        return self._shared_inputs[key][1]

    def _record_output_gradient(self, block: KroneckerBlock, grad: th.Tensor) -> None:
        if self._collecting_gradients and block in self._pending:
            started = self._statistics_clock.start(grad.device)
            self._pending[block]["G"] = block.gradient_outer(grad)  # no graph: the Fisher pass does not create one
            self._statistics_clock.stop(started)

    def update_statistics(self, fisher_loss: th.Tensor) -> bool:
        """
        Backpropagate the Fisher loss of the forward pass captured by :meth:`capture_statistics` and fold the
        resulting factors into the running averages. Leaves every ``.grad`` untouched and keeps the graph.

        :param fisher_loss: sum over the batch of the negative log-likelihood of targets sampled from the
            model's own predictive distribution (the true Fisher, not the empirical one)
        :return: whether the statistics were updated (False when a factor was not finite: the event is counted); with a
            ``process_group``, the factors are joined across the ranks and folded by the next :meth:`step` (True)
        """
        blocks = [block for block in self.blocks if block in self._outputs]
        if not blocks:
            self._pending, self._outputs = {}, {}
            return False
        # Differentiating with respect to the layer outputs skips every weight gradient. An output that an in-place
        # operation modified afterwards is reached through its weight instead, so that its hook still fires.
        targets = [
            output if output._version == version else block.weight for block, (output, version) in self._outputs.items()
        ]
        self._collecting_gradients = True
        try:
            th.autograd.grad(fisher_loss, targets, retain_graph=True, allow_unused=True)
        finally:
            self._collecting_gradients = False
        pending, self._pending, self._outputs = self._pending, {}, {}
        complete = [(block, pending[block]) for block in blocks if "G" in pending[block]]
        if self.process_group is not None:
            self._unjoined_statistics = complete  # joined with the gradients by the next step
            return True
        return self._fold_statistics(complete)

    def _fold_statistics(self, complete: list[tuple[KroneckerBlock, dict[str, tuple[th.Tensor, int]]]]) -> bool:
        """Fold each block's outer-product sums into its running averages, unless one of them is not finite."""
        outers = [sums[name][0] for _, sums in complete for name in ("A", "G")]
        if not tensors_finite(outers):
            self.counters["nonfinite_statistics"] += 1
            return False
        decay = self.statistics_decay
        averages, weights = [], []
        for block, sums in complete:
            state = self.state[block.weight]
            if "A_average" not in state:
                state["A_average"] = th.zeros_like(sums["A"][0])
                state["G_average"] = th.zeros_like(sums["G"][0])
                state["statistics_count"] = 0
                state["statistics_weight"] = 0.0
            state["statistics_count"] += 1
            # The weight of all batches in the average, 1 - decay^count while the decay stays: it debiases the average
            # correctly when the decay changes (a model loaded with another stats_decay).
            state["statistics_weight"] = decay * state["statistics_weight"] + 1.0 - decay
            averages += [state["A_average"], state["G_average"]]
            # The new factors are the sums divided by their counts: the divisions join the decay's product.
            weights += [(1 - decay) / sums[name][1] for name in ("A", "G")]
        th._foreach_mul_(averages, decay)
        th._foreach_add_(averages, th._foreach_mul(outers, weights))  # not in place: layers may share a sum
        return True

    def factors(self, block: KroneckerBlock) -> tuple[th.Tensor, th.Tensor] | None:
        """The zero-debiased running averages ``(A, G)`` of a block, or None before its first statistics."""
        state = self.state.get(block.weight, {})
        if "A_average" not in state:
            return None
        weight = state["statistics_weight"]
        return state["A_average"] / weight, state["G_average"] / weight

    # ------------------------------------------------------------------ inverses
    def _compute_inverses(
        self, factors: dict[KroneckerBlock, tuple[th.Tensor, th.Tensor]], damping: float
    ) -> tuple[dict[KroneckerBlock, BlockInverse], int, int]:
        inverses, retries, failures = {}, 0, 0
        for block, (a_factor, g_factor) in factors.items():
            try:
                inverses[block], block_retries = compute_inverse(a_factor, g_factor, self.damping_mode, damping)
                retries += block_retries
            except InverseFailure:
                failures += 1
        return inverses, retries, failures

    def _add_inverses(self, result: tuple[dict[KroneckerBlock, BlockInverse], int, int]) -> None:
        inverses, retries, failures = result
        # A block whose refresh failed keeps its last good inverse.
        self._inverses.update(inverses)
        self.counters["float64_retries"] += retries
        self.counters["inverse_failures"] += failures

    def _install_inverses(self, result: tuple[dict[KroneckerBlock, BlockInverse], int, int], seconds: float) -> None:
        self._add_inverses(result)
        self._inverse_seconds += seconds  # on CUDA too: the decompositions' finiteness checks wait for them
        self.inverse_age = 0

    def _timed_inverses(
        self, factors: dict[KroneckerBlock, tuple[th.Tensor, th.Tensor]], damping: float
    ) -> tuple[tuple[dict[KroneckerBlock, BlockInverse], int, int], float]:
        start = time.perf_counter()
        result = self._compute_inverses(factors, damping)
        return result, time.perf_counter() - start

    def _refresh_inverses(self, damping: float) -> None:
        self._install_saved_inverses()
        if self._inverse_future is not None and self._inverse_future.done():
            self._install_inverses(*self._inverse_future.result())
            self._inverse_future = None
        with_statistics = [block for block in self.blocks if "A_average" in self.state.get(block.weight, {})]
        # A block whose decomposition failed before it ever had an inverse waits for the next refresh, not the next step.
        missing = any(block not in self._inverses and block not in self._failed_blocks for block in with_statistics)
        if not with_statistics or not (missing or self.inverse_age >= self.inverse_update_interval):
            return
        # Debiased copies of the factors only when a refresh is due.
        factors = {block: f for block in with_statistics if (f := self.factors(block)) is not None}
        if self.async_inverse and not missing:
            if self._inverse_future is None:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kfac-inverse")
                snapshot = {block: (a.clone(), g.clone()) for block, (a, g) in factors.items()}
                self._inverse_future = self._executor.submit(self._timed_inverses, snapshot, damping)
            return
        if self.process_group is not None:
            self._install_inverses(*self._inverses_shared_by_ranks(factors, damping))
        else:
            self._install_inverses(*self._timed_inverses(factors, damping))
        self._failed_blocks = {block for block in with_statistics if block not in self._inverses}

    # ------------------------------------------------------------------ data parallelism
    def _inverses_shared_by_ranks(
        self, factors: dict[KroneckerBlock, tuple[th.Tensor, th.Tensor]], damping: float
    ) -> tuple[tuple[dict[KroneckerBlock, BlockInverse], int, int], float]:
        """
        Each block's inverse decomposed by one rank (blocks assigned by cost, largest first, to the least loaded rank)
        and broadcast to the others, rather than every rank decomposing every block: on 2 ranks, a refresh of
        ``AcktrCNN``'s factors took 606 instead of 818 ms (``python benchmarks/distributed_cost.py --inverses``), the
        largest block decomposed while the other rank decomposes the rest. Every rank ends with the same inverses and
        counts of numerical events; a block that failed on its rank keeps its last good inverse everywhere.
        """
        start = time.perf_counter()
        group = self.process_group
        assert group is not None
        owners = assign_by_cost(factors, dist.get_world_size(group))
        rank = dist.get_rank(group)
        computed, retries, failures = self._compute_inverses({b: f for b, f in factors.items() if owners[b] == rank}, damping)
        inverses = {}
        for block, (a_factor, g_factor) in factors.items():
            source = dist.get_global_rank(group, owners[block])
            inverse = computed.get(block)
            status = a_factor.new_tensor([float(inverse is not None), inverse.pi if inverse is not None else 1.0])
            dist.broadcast(status, src=source, group=group)
            if not status[0]:
                continue
            sent = [tensor.contiguous() for tensor in inverse.decomposition()] if inverse is not None else None
            inverses[block] = self._broadcast_inverse(a_factor, g_factor, damping, float(status[1]), source, sent)
        counts = th.tensor([retries, failures], dtype=th.int64, device=next(iter(factors.values()))[0].device)
        dist.all_reduce(counts, group=group)
        return (inverses, int(counts[0]), int(counts[1])), time.perf_counter() - start

    def _broadcast_inverse(
        self,
        a_factor: th.Tensor,
        g_factor: th.Tensor,
        damping: float,
        pi: float,
        source: int,
        sent: list[th.Tensor] | None,
    ) -> BlockInverse:
        """
        The inverse of a block that rank ``source`` decomposed, from the broadcast of its ``decomposition()`` (``sent``,
        contiguous, on that rank; None elsewhere). Every rank builds it from the same contiguous tensors, so that the
        products of the next steps round alike on every rank (eigenvectors come out of ``eigh`` in column-major order).
        """
        a_size, g_size = a_factor.shape[0], g_factor.shape[0]
        if sent is None:
            sent = [a_factor.new_empty(a_size, a_size), g_factor.new_empty(g_size, g_size)]
            sent += [a_factor.new_empty(a_size), g_factor.new_empty(g_size)] if self.damping_mode == "exact" else []
        for tensor in sent:
            dist.broadcast(tensor, src=source, group=self.process_group)
        a_matrix, g_matrix, *eigenvalues = sent
        a_eigenvalues, g_eigenvalues = eigenvalues or (None, None)
        a_factor, g_factor = symmetrize(a_factor), symmetrize(g_factor)
        return BlockInverse(
            self.damping_mode, damping, a_factor, g_factor, a_matrix, g_matrix, a_eigenvalues, g_eigenvalues, pi=pi
        )

    def _join_across_ranks(self) -> None:
        """
        Replace every gradient and the outer-product sums of the last statistics by their means over the ranks, with one
        all-reduce per dtype, then fold the statistics. Every rank then holds the same numbers, so the finiteness checks,
        inverses and step that follow agree. The ranks must have gradients for the same parameters (the same model and
        loss on other data).
        """
        params = [param for group in self.param_groups for param in group["params"] if param.grad is not None]
        unjoined, self._unjoined_statistics = self._unjoined_statistics, []
        outers = [sums[name][0] for _, sums in unjoined for name in ("A", "G")]
        joined = all_reduce_mean([param.grad for param in params] + outers, self.process_group)
        for param, grad in zip(params, joined, strict=False):
            param.grad = grad
        joined_outers = iter(joined[len(params) :])
        for _, sums in unjoined:
            for name in ("A", "G"):
                sums[name] = (next(joined_outers), sums[name][1])
        if unjoined:
            self._fold_statistics(unjoined)

    # ------------------------------------------------------------------ step
    def _natural_gradients(self) -> list[Direction]:
        """The directions of every block with a gradient (preconditioned when it has inverses) and of every other parameter."""
        directions, covered = [], set()
        for block in self.blocks:
            grad = block.gradient_matrix()
            if grad is None:
                continue
            inverse = self._inverses.get(block)
            natural = inverse.precondition(grad) if inverse is not None else grad
            directions.append(Direction(block.parameters, natural, grad, block))
            covered.update(block.parameters)
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None and param not in covered:
                    directions.append(Direction([param], param.grad, param.grad))
        return directions

    def natural_gradient_inner(self, loss: th.Tensor) -> float:
        """
        ``sum <V, grad>`` over all parameters for the gradient of ``loss`` alone: the quantity that the trust region
        bounds, for one term of a loss (the policy's or the critic's, say). It uses the inverses of the last step (raw
        gradients where a layer has none yet), keeps the graph and leaves every ``.grad`` as it was.
        """
        self._install_saved_inverses()
        params = [param for group in self.param_groups for param in group["params"]]
        saved_grads = [param.grad for param in params]
        grads = th.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        try:
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            return trust_region_sums([[(d.natural, d.grad) for d in self._natural_gradients()]])[0]
        finally:
            for param, grad in zip(params, saved_grads, strict=True):
                param.grad = grad

    @th.no_grad()
    def step(self, closure: None = None, *, further: bool = False) -> None:  # type: ignore[override]
        """
        Precondition the gradients in ``.grad``, apply the trust region and take a momentum step.
        A step whose gradient or preconditioned gradient is not finite is skipped and counted.

        :param closure: Not supported (K-FAC takes one step per gradient)
        :param further: A further step on the same statistics within one update (say, fitting the critic again): it
            neither refreshes the inverses nor counts toward the statistics and inverse intervals or the consecutive
            skipped steps (a skipped one still counts in ``counters["skipped_steps"]``), and the logged diagnostics stay
            those of the update's first step. Parameters without a gradient do not move
        """
        if closure is not None:
            raise ValueError("KFAC.step() takes no closure")
        if self.process_group is not None:
            self._join_across_ranks()
        if not further:
            self._refresh_inverses(self.param_groups[0]["damping"])
            self.n_steps += 1
            self.inverse_age += 1
        diagnostics: dict[str, float] = {}

        directions: list[list[Direction]] = [[] for _ in self.param_groups]
        for direction in self._natural_gradients():
            directions[self._group_index[direction.params[0]]].append(direction)  # a block lies within one group
        vg_sums = trust_region_sums([[(d.natural, d.grad) for d in group_directions] for group_directions in directions])
        for prefix, vg_sum in zip(self._group_prefixes(), vg_sums, strict=True):
            diagnostics[f"{prefix}vg_sum"] = vg_sum
        finite = all(math.isfinite(vg_sum) for vg_sum in vg_sums)
        if not further:  # a further step's outcome says nothing of the update's own gradient
            self.consecutive_skipped_steps = 0 if finite else self.consecutive_skipped_steps + 1
        if not finite:
            self.counters["skipped_steps"] += 1
            diagnostics.update({f"{prefix}trust_region_scale": 0.0 for prefix in self._group_prefixes()})
        else:
            for prefix, group, group_directions, vg_sum in zip(
                self._group_prefixes(), self.param_groups, directions, vg_sums, strict=True
            ):
                lr, momentum = group["lr"], group["momentum"]
                scale = 1.0
                if lr > 0.0 and vg_sum > 0.0:
                    scale = min(1.0, math.sqrt(group["kl_clip"] / (lr**2 * vg_sum)))
                diagnostics[f"{prefix}trust_region_scale"] = scale
                if group_directions:
                    params = [param for direction in group_directions for param in direction.params]
                    naturals = [natural for direction in group_directions for natural in direction.naturals()]
                    self._momentum_step(params, naturals, scale, lr, momentum)
        if not further:
            self._last.update(diagnostics)

    def _momentum_step(
        self, params: list[th.Tensor], naturals: list[th.Tensor], scale: float, lr: float, momentum: float
    ) -> None:
        """``buf = momentum * buf + scale * V``, ``p -= lr * (1 - momentum) * buf`` for all parameters at once."""
        for param in params:
            if "momentum_buffer" not in self.state[param]:
                self.state[param]["momentum_buffer"] = th.zeros_like(param)
        buffers = [self.state[param]["momentum_buffer"] for param in params]
        th._foreach_mul_(buffers, momentum)
        th._foreach_add_(buffers, naturals, alpha=scale)
        th._foreach_add_(params, buffers, alpha=-lr * (1.0 - momentum))

    def _group_prefixes(self) -> list[str]:
        """Diagnostic key prefix of each param group: none for the first, ``name/`` for the separate trust regions."""
        return ["" if index == 0 else f"{group['name']}/" for index, group in enumerate(self.param_groups)]

    def _check_blocks_within_groups(self) -> None:
        for block in self.blocks:
            if len({self._group_index[p] for p in block.parameters}) > 1:
                raise ValueError(f"The weight and bias of layer {block.name!r} are in different trust regions")

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, per_layer: bool = False) -> dict[str, float]:
        """
        Numbers to log: trust-region scale and ``sum <V, grad>`` of the last step, damping, age of the inverses, seconds
        spent on statistics and inversions since the last call, counters of numerical events, and with
        ``per_layer`` the damping split ``pi`` and the eigenvalue range of each layer's factors.
        """
        out = {
            **self._last,
            "damping": float(self.param_groups[0]["damping"]),
            "inverse_age": float(self.inverse_age),
            "statistics_seconds": self._statistics_clock.take(),
            "inverse_seconds": self._inverse_seconds,
            "uncovered_parameters": float(len(self.uncovered_parameters)),
        }
        self._inverse_seconds = 0.0
        out.update({name: float(count) for name, count in self.counters.items()})
        if per_layer:
            self._install_saved_inverses()
            for block, inverse in self._inverses.items():
                a_min, a_max, g_min, g_max = inverse.eigenvalue_range()
                out.update(
                    {
                        f"{block.name}/pi": inverse.pi,
                        f"{block.name}/A_eig_min": a_min,
                        f"{block.name}/A_eig_max": a_max,
                        f"{block.name}/G_eig_min": g_min,
                        f"{block.name}/G_eig_max": g_max,
                    }
                )
        return out

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """
        The optimizer's state keyed by parameters (loadable with ``torch.load(weights_only=True)``). Each block keeps
        its averaged factors and the factors its inverse was computed from (``inverse_factors``), symmetric matrices
        stored as their upper triangles; the inverse itself is recomputed at load.
        """
        state = super().state_dict()
        index = {id(param): i for i, param in enumerate(param for group in self.param_groups for param in group["params"])}
        for block in self.blocks:
            saved = state["state"].get(index[id(block.weight)])
            if saved is None:
                continue
            saved = {key: pack_symmetric(value) if key in AVERAGE_KEYS else value for key, value in saved.items()}
            inverse = self._inverses.get(block)
            factors = (inverse.a_factor, inverse.g_factor) if inverse is not None else self._saved_inverse_factors.get(block)
            if factors is not None:
                saved["inverse_factors"] = {"A": pack_symmetric(factors[0]), "G": pack_symmetric(factors[1])}
            state["state"][index[id(block.weight)]] = saved  # a copy: the live state stays as it is
        state["kfac"] = {
            "n_steps": self.n_steps,
            "inverse_age": self.inverse_age,
            "counters": dict(self.counters),
            "conv_mode": self.conv_mode,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("kfac", None)
        if extra is None:
            raise ValueError(
                "This optimizer state was not saved by the K-FAC optimizer (it has no 'kfac' entry): "
                "was the model saved by another algorithm? Load it with the algorithm that saved it."
            )
        super().load_state_dict(state_dict)
        self.n_steps = int(extra["n_steps"])
        self.inverse_age = int(extra["inverse_age"])
        self.counters.update({name: int(value) for name, value in extra["counters"].items()})
        self._inverse_future = None
        self._inverses = {}
        for block in self.blocks:
            state = self.state[block.weight]
            for key in AVERAGE_KEYS:
                if key in state:
                    state[key] = unpack_symmetric(state[key])
            if "A_average" in state and "statistics_weight" not in state:  # saved before the weight was kept
                state["statistics_weight"] = 1.0 - self.statistics_decay ** state["statistics_count"]
        if extra.get("conv_mode", self.conv_mode) != self.conv_mode:
            self._discard_convolution_statistics(extra["conv_mode"])
        self._restore_inverses()

    def _discard_convolution_statistics(self, saved_conv_mode: str) -> None:
        """The saved statistics of the convolutions estimate another approximation than this ``conv_mode``'s."""
        warnings.warn(
            f"The saved K-FAC statistics of the convolutions were estimated with conv_mode={saved_conv_mode!r}: they are "
            f"discarded, and conv_mode={self.conv_mode!r} estimates them anew from the next update",
            stacklevel=4,
        )
        for block in self.blocks:
            if block.is_conv:
                for key in ("A_average", "G_average", "statistics_count", "statistics_weight", *SAVED_INVERSE_KEYS):
                    self.state[block.weight].pop(key, None)

    def _restore_inverses(self) -> None:
        """
        Keep what the inverses are recomputed from, by the next step (a model loaded to predict never pays for it): the
        factors they were computed from (the same inverses for the same settings, in this optimizer's damping mode), or
        the averaged factors in a state saved with the inverses themselves (``inverse``, by version 0.4.0 and earlier).
        """
        self._saved_inverse_factors = {}
        for block in self.blocks:
            state = self.state[block.weight]
            saved = state.pop("inverse_factors", None)
            if saved is not None:
                self._saved_inverse_factors[block] = (unpack_symmetric(saved["A"]), unpack_symmetric(saved["G"]))
            elif state.pop("inverse", None) is not None and (averaged := self.factors(block)) is not None:
                self._saved_inverse_factors[block] = averaged

    def _install_saved_inverses(self) -> None:
        """
        The inverses of a loaded state, with the current damping (their numerical events were counted before saving);
        with a ``process_group``, each decomposed by one rank and shared, so that a failure is every rank's.
        """
        if self._saved_inverse_factors:
            factors, damping = self._saved_inverse_factors, self.param_groups[0]["damping"]
            if self.process_group is not None:
                (inverses, _, _), _ = self._inverses_shared_by_ranks(factors, damping)
            else:
                inverses, _, _ = self._compute_inverses(factors, damping)
            self._inverses.update(inverses)
            self._saved_inverse_factors = {}

    def __getstate__(self) -> dict[str, Any]:
        # The whole object, so that copying a model (whose forward hooks refer to this optimizer) copies a working
        # optimizer; torch's Optimizer keeps only its defaults, state and param groups. A thread does not copy.
        state = self.__dict__.copy()
        state["_executor"], state["_inverse_future"] = None, None
        state["_statistics_clock"] = StatisticsClock()  # CUDA events do not copy
        return state

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model (its forward hooks)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
