"""K-FAC factors and preconditioned gradients against exact curvature (float64)."""

import pytest
import torch as th
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev

from sb3_acktr.kfac import KFAC, KroneckerBlock, compute_inverse

DTYPE = th.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    th.manual_seed(0)


def weight_matrix(block: KroneckerBlock) -> th.Tensor:
    """Weight and bias as the block's matrix M (out, in [+1])."""
    matrix = block.weight.detach().reshape(block.weight.shape[0], -1)
    if block.bias is not None:
        matrix = th.cat([matrix, block.bias.detach().reshape(-1, 1)], dim=1)
    return matrix


@pytest.mark.parametrize(
    "conv_kwargs",
    [
        dict(kernel_size=3),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(2, 4), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
        dict(kernel_size=8, stride=4, bias=False),
    ],
)
def test_conv_patch_layout_reproduces_conv2d(conv_kwargs: dict) -> None:
    conv = nn.Conv2d(3, 5, **conv_kwargs).to(DTYPE)
    block = KroneckerBlock("conv", conv)
    inputs = th.randn(4, 3, 17, 15, dtype=DTYPE)
    patches = block.patches(inputs)
    if block.bias is not None:
        patches = th.cat([patches, th.ones_like(patches[:, :1])], dim=1)
    expected = conv(inputs)
    via_patches = (weight_matrix(block) @ patches).reshape(expected.shape)
    assert th.allclose(via_patches, expected, atol=1e-12)


def test_conv_activation_factor_equals_explicit_patch_loop() -> None:
    conv = nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1).to(DTYPE)
    block = KroneckerBlock("conv", conv)
    inputs = th.randn(3, 2, 7, 6, dtype=DTYPE)
    padded = F.pad(inputs, (1, 1, 1, 1))
    patches = []
    for example in range(3):
        for i in range(0, padded.shape[2] - 2, 2):
            for j in range(0, padded.shape[3] - 2, 2):
                patch = padded[example, :, i : i + 3, j : j + 3].reshape(-1)
                patches.append(th.cat([patch, th.ones(1, dtype=DTYPE)]))
    stacked = th.stack(patches)
    expected = stacked.T @ stacked / stacked.shape[0]
    assert th.allclose(block.activation_factor(inputs), expected, atol=1e-12)


@pytest.mark.parametrize("bias", [True, False])
def test_kronecker_identity_against_per_example_gradient(bias: bool) -> None:
    """One example, one output gradient: G (x) A equals the outer product of the per-example gradient."""
    layer = nn.Linear(4, 3, bias=bias).to(DTYPE)
    block = KroneckerBlock("fc", layer)
    x = th.randn(1, 4, dtype=DTYPE)
    direction = th.randn(3, dtype=DTYPE)
    params = dict(layer.named_parameters())

    def loss(p: dict) -> th.Tensor:
        return (functional_call(layer, p, (x,)) @ direction).sum()

    grads = th.func.grad(loss)(params)
    per_example = grads["weight"]
    if bias:
        per_example = th.cat([per_example, grads["bias"].reshape(-1, 1)], dim=1)
    vec = per_example.reshape(-1)
    kfac = th.kron(block.gradient_factor(direction.reshape(1, 3)), block.activation_factor(x))
    assert th.allclose(kfac, th.outer(vec, vec), atol=1e-12)


def replicate_for_output_fisher(x: th.Tensor, output_fisher_root: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
    """
    Inputs and a per-row weighting such that the Fisher loss sum_k w_k . f(x_k) has the exact output
    Fisher ``L L^T`` as its G factor: one copy of the datum per column of ``L``, scaled by sqrt(K).
    """
    n_copies = output_fisher_root.shape[1]
    inputs = x.expand(n_copies, *x.shape[1:]).clone()
    weights = n_copies**0.5 * output_fisher_root.T  # row k: sqrt(K) * L[:, k]
    return inputs, weights


def exact_fisher_blocks(model: nn.Module, x: th.Tensor, output_fisher: th.Tensor) -> dict[str, th.Tensor]:
    """Diagonal blocks J_l^T F_out J_l of the exact Fisher of one datum, for each layer (weight and bias as M)."""
    params = {name: p.detach() for name, p in model.named_parameters()}
    jacobians = jacrev(lambda p: functional_call(model, p, (x,)).reshape(-1))(params)
    blocks = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            out_dim = output_fisher.shape[0]
            jac = jacobians[f"{name}.weight"].reshape(out_dim, module.weight.shape[0], -1)
            if module.bias is not None:
                jac = th.cat([jac, jacobians[f"{name}.bias"].reshape(out_dim, -1, 1)], dim=2)
            jac = jac.reshape(out_dim, -1)
            blocks[name] = jac.T @ output_fisher @ jac
    return blocks


def kfac_factors_for(model: nn.Module, inputs: th.Tensor, weights: th.Tensor, **kwargs) -> dict[str, th.Tensor]:
    optimizer = KFAC(model, stats_decay=0.0, **kwargs)
    with optimizer.capture_statistics():
        outputs = model(inputs)
    optimizer.update_statistics((outputs.reshape(outputs.shape[0], -1) * weights).sum())
    result = {}
    for block in optimizer.blocks:
        factors = optimizer.factors(block)
        assert factors is not None
        result[block.name] = th.kron(factors[1], factors[0])
    optimizer.remove_hooks()
    return result


def categorical_output_fisher(logits: th.Tensor) -> th.Tensor:
    probs = th.softmax(logits, dim=-1)
    return th.diag(probs) - th.outer(probs, probs)


def test_one_datum_deep_network_blocks_are_exact() -> None:
    """For one datum every diagonal block of the Fisher is exactly G (x) A (here with a categorical output)."""
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).to(DTYPE)
    x = th.randn(1, 5, dtype=DTYPE)
    output_fisher = categorical_output_fisher(model(x)[0].detach())
    eigenvalues, eigenvectors = th.linalg.eigh(output_fisher)
    root = eigenvectors * eigenvalues.clamp(min=0).sqrt()
    inputs, weights = replicate_for_output_fisher(x, root)
    exact = exact_fisher_blocks(model, x, output_fisher)
    kfac = kfac_factors_for(model, inputs, weights)
    for name, block in exact.items():
        assert th.allclose(kfac[name], block, atol=1e-10), name


def test_deep_linear_gaussian_output_is_exact() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)).to(DTYPE)
    x = th.randn(1, 3, dtype=DTYPE)
    output_fisher = th.eye(2, dtype=DTYPE)
    inputs, weights = replicate_for_output_fisher(x, th.eye(2, dtype=DTYPE))
    exact = exact_fisher_blocks(model, x, output_fisher)
    kfac = kfac_factors_for(model, inputs, weights)
    for name, block in exact.items():
        assert th.allclose(kfac[name], block, atol=1e-10), name


def test_shared_input_linear_is_exact() -> None:
    """Examples with one common input and different output gradients: the Fisher of a Linear layer is G (x) A."""
    layer = nn.Linear(4, 3).to(DTYPE)
    x = th.randn(1, 4, dtype=DTYPE).expand(6, 4).clone()
    weights = th.randn(6, 3, dtype=DTYPE)
    a = th.cat([x[0], th.ones(1, dtype=DTYPE)])
    exact = th.stack([th.outer(th.kron(w, a), th.kron(w, a)) for w in weights]).mean(dim=0)
    kfac = kfac_factors_for(nn.Sequential(layer), x, weights)["0"]
    assert th.allclose(kfac, exact, atol=1e-12)


class TwoHeads(nn.Module):
    """Two layers reading the same input (the first layers of separate actor and critic networks), and a third."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        make = (lambda: nn.Conv2d(2, 3, kernel_size=3, stride=2)) if conv else (lambda: nn.Linear(5, 3))
        self.actor, self.critic = make(), make()
        self.unbiased = nn.Conv2d(2, 3, kernel_size=3, stride=2, bias=False) if conv else nn.Linear(5, 3, bias=False)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return th.cat([self.actor(x).flatten(1), self.critic(x).flatten(1), self.unbiased(x).flatten(1)], dim=1)


@pytest.mark.parametrize("conv", [False, True])
def test_layers_reading_one_input_share_its_activation_factor(conv: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Computed once for the two biased layers of one input (another one for the unbiased layer), each still exact."""
    model = TwoHeads(conv).to(DTYPE)
    x = th.randn(6, 2, 7, 7, dtype=DTYPE) if conv else th.randn(6, 5, dtype=DTYPE)
    calls: list[str] = []
    original = KroneckerBlock.activation_outer

    def counted(block: KroneckerBlock, inputs: th.Tensor) -> tuple[th.Tensor, int]:
        calls.append(block.name)
        return original(block, inputs)

    monkeypatch.setattr(KroneckerBlock, "activation_outer", counted)
    optimizer = KFAC(model, stats_decay=0.0, patches_per_feature=None)
    with optimizer.capture_statistics():
        outputs = model(x)
    optimizer.update_statistics((outputs * th.randn_like(outputs)).sum())
    assert calls == ["actor", "unbiased"]
    for block in optimizer.blocks:
        factors = optimizer.factors(block)
        assert factors is not None
        assert th.allclose(factors[0], block.activation_factor(x), atol=1e-12), block.name
    actor, critic = (optimizer.factors(block) for block in optimizer.blocks[:2])
    assert actor is not None and critic is not None and not th.allclose(actor[1], critic[1])


def test_conv_reduce_is_exact_for_constant_input() -> None:
    """All patches of the datum equal: the reduce approximation of a conv block is exact."""
    model = nn.Sequential(nn.Conv2d(2, 3, kernel_size=2, stride=1), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)).to(DTYPE)
    x = th.randn(1, 2, 1, 1, dtype=DTYPE).expand(1, 2, 4, 4).clone()
    output_fisher = th.eye(2, dtype=DTYPE)
    inputs, weights = replicate_for_output_fisher(x, th.eye(2, dtype=DTYPE))
    exact = exact_fisher_blocks(model, x, output_fisher)
    kfac = kfac_factors_for(model, inputs, weights, conv_mode="reduce")
    for name, block in exact.items():
        assert th.allclose(kfac[name], block, atol=1e-10), name


def test_conv_expand_factor_scale_matches_kfc() -> None:
    """Expand mode: A averages the B*T patches, G sums each example's T locations (the factor T sits in G)."""
    conv = nn.Conv2d(1, 2, kernel_size=2).to(DTYPE)
    block = KroneckerBlock("conv", conv)
    grad = th.randn(3, 2, 4, 5, dtype=DTYPE)
    rows = grad.permute(0, 2, 3, 1).reshape(-1, 2)
    assert th.allclose(block.gradient_factor(grad), rows.T @ rows / 3, atol=1e-12)


def test_sampled_factors_converge_to_exact_fisher_factors() -> None:
    """Monte-Carlo: G from sampled categorical targets approaches E[diag(p) - p p^T] as the samples grow."""
    layer = nn.Linear(3, 4).to(DTYPE)
    base = th.randn(8, 3, dtype=DTYPE)
    with th.no_grad():
        expected_g = th.stack([categorical_output_fisher(logits) for logits in layer(base)]).mean(0)
    errors = []
    for repeats in (4, 4096):
        optimizer = KFAC(nn.Sequential(layer), stats_decay=0.0)
        inputs = base.repeat(repeats, 1)
        with optimizer.capture_statistics():
            logits = optimizer.blocks[0].module(inputs)
        distribution = th.distributions.Categorical(logits=logits)
        optimizer.update_statistics(-distribution.log_prob(distribution.sample()).sum())
        factors = optimizer.factors(optimizer.blocks[0])
        assert factors is not None
        errors.append(float(th.linalg.matrix_norm(factors[1] - expected_g) / th.linalg.matrix_norm(expected_g)))
        optimizer.remove_hooks()
    assert errors[1] < 0.05
    assert errors[1] < errors[0] / 4


def random_spd(dim: int, scale: float = 1.0) -> th.Tensor:
    root = th.randn(dim, dim, dtype=DTYPE)
    return scale * (root @ root.T / dim + 0.1 * th.eye(dim, dtype=DTYPE))


def test_exact_damping_equals_dense_solve() -> None:
    a_factor, g_factor = random_spd(5), random_spd(3, scale=0.01)
    grad = th.randn(3, 5, dtype=DTYPE)
    inverse, retries = compute_inverse(a_factor, g_factor, "exact", damping=0.01)
    dense = th.kron(g_factor, a_factor) + 0.01 * th.eye(15, dtype=DTYPE)
    expected = th.linalg.solve(dense, grad.reshape(-1)).reshape(3, 5)
    assert retries == 0
    assert th.allclose(inverse.precondition(grad), expected, atol=1e-10)


def test_factored_damping_equals_kronecker_of_damped_inverses() -> None:
    a_factor, g_factor = random_spd(5), random_spd(3, scale=0.01)
    grad = th.randn(3, 5, dtype=DTYPE)
    damping = 0.01
    inverse, _ = compute_inverse(a_factor, g_factor, "factored", damping=damping)
    pi = ((a_factor.trace() / 5) / (g_factor.trace() / 3)).sqrt()
    damped_a = a_factor + pi * damping**0.5 * th.eye(5, dtype=DTYPE)
    damped_g = g_factor + damping**0.5 / pi * th.eye(3, dtype=DTYPE)
    dense = th.kron(th.linalg.inv(damped_g), th.linalg.inv(damped_a))
    expected = (dense @ grad.reshape(-1)).reshape(3, 5)
    assert inverse.pi == pytest.approx(float(pi))
    assert th.allclose(inverse.precondition(grad), expected, atol=1e-10)


def test_factored_damping_guards_zero_traces_and_scalar_factors() -> None:
    inverse, _ = compute_inverse(th.zeros(1, 1, dtype=DTYPE), th.zeros(2, 2, dtype=DTYPE), "factored", damping=0.04)
    assert inverse.pi == 1.0
    grad = th.ones(2, 1, dtype=DTYPE)
    assert th.allclose(inverse.precondition(grad), grad / 0.04)
