"""Curvature statistics on a random subset of the rollout (``stats_batch_size``)."""

import pytest
import torch as th
from conftest import assert_no_numerical_trouble
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import FakeImageEnv, SimpleMultiObsEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import NatureCNN
from stable_baselines3.common.utils import set_random_seed
from torch import nn

import sb3_acktr.acktr.acktr as acktr_module
from sb3_acktr import ACKTR, AcktrCNN
from sb3_acktr.acktr.acktr import resolve_stats_batch_size, select_observations, statistics_subset
from sb3_acktr.kfac import KroneckerBlock


def rollout_model(env, n_steps: int = 8, policy: str = "MlpPolicy", **kwargs) -> ACKTR:
    """A model whose rollout buffer holds one collected rollout, ready for ``train()``."""
    model = ACKTR(policy, env, n_steps=n_steps, seed=0, **kwargs)
    model.set_logger(Logger(None, []))
    model.learn(n_steps * model.n_envs)
    return model


def kfac_state(model: ACKTR) -> list[th.Tensor]:
    state = model.kfac.state
    return [state[block.weight][key] for block in model.kfac.blocks for key in ("A_average", "G_average")]


def test_subset_indices() -> None:
    assert statistics_subset(10, None, th.device("cpu")) is None
    assert statistics_subset(10, 10, th.device("cpu")) is None
    assert statistics_subset(10, 64, th.device("cpu")) is None
    th.manual_seed(0)
    indices = statistics_subset(10, 4, th.device("cpu"))
    assert indices is not None and indices.shape == (4,)
    assert th.equal(indices, indices.unique())  # sorted, without repetition
    assert 0 <= int(indices.min()) and int(indices.max()) < 10
    draws = th.stack([statistics_subset(10, 4, th.device("cpu")) for _ in range(2000)])  # type: ignore[misc]
    frequencies = th.bincount(draws.flatten(), minlength=10) / draws.numel()
    assert th.allclose(frequencies, th.full((10,), 0.1), atol=0.015)  # every example equally likely


def test_select_observations_of_dict_and_tensor() -> None:
    indices = th.tensor([0, 2])
    obs = {"a": th.arange(8).reshape(4, 2), "b": th.arange(4)}
    selected = select_observations(obs, indices)
    assert isinstance(selected, dict)
    assert th.equal(selected["a"], th.tensor([[0, 1], [4, 5]])) and th.equal(selected["b"], th.tensor([0, 2]))
    assert th.equal(select_observations(th.arange(4), indices), th.tensor([0, 2]))  # type: ignore[arg-type]


@pytest.mark.parametrize("layer", [nn.Linear(5, 3), nn.Conv2d(2, 3, 3, stride=2, padding=1)], ids=["linear", "conv"])
def test_subset_activation_factor_is_unbiased(layer: nn.Module) -> None:
    """Monte Carlo: the mean of the subsets' factors converges to the whole batch's; a fixed subset's does not."""
    th.manual_seed(0)
    block = KroneckerBlock("layer", layer)  # type: ignore[arg-type]
    shape = (32, 5) if isinstance(layer, nn.Linear) else (32, 2, 6, 6)
    # Heterogeneous examples, so that a biased choice of examples would show.
    inputs = th.randn(shape, dtype=th.float64) * th.linspace(0.1, 3.0, 32, dtype=th.float64).reshape(
        -1, *[1] * (len(shape) - 1)
    )
    whole = block.activation_factor(inputs)
    draws = [block.activation_factor(inputs[statistics_subset(32, 8, th.device("cpu"))]) for _ in range(4000)]  # type: ignore[index]
    samples = th.stack(draws)
    standard_error = samples.std(dim=0) / len(draws) ** 0.5
    assert ((samples.mean(dim=0) - whole).abs() <= 5 * standard_error + 1e-12).all()
    first_examples = block.activation_factor(inputs[:8])
    assert ((first_examples - whole).abs() > 5 * standard_error + 1e-12).any()


def test_subset_of_the_whole_batch_reproduces_the_shared_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    A subset made of every example, with passes of its own, gives the same factors bit for bit, and the same update up
    to the order in which autograd adds the entropy's and the log-likelihood's gradients (sampling the Fisher's actions
    from the loss's own distribution builds its probabilities earlier).
    """
    shared, separate = (
        rollout_model(make_vec_env("CartPole-v1", n_envs=2, seed=0), stats_batch_size=None, stats_update_interval=1)
        for _ in "ab"
    )
    set_random_seed(1)
    shared.train()
    monkeypatch.setattr(acktr_module, "statistics_subset", lambda n, size, device: th.arange(n))
    set_random_seed(1)
    separate.train()
    assert separate.kfac.state[separate.kfac.blocks[0].weight]["statistics_count"] == 2  # the checked update took them
    for mine, theirs in zip(kfac_state(separate), kfac_state(shared), strict=True):
        assert th.equal(mine, theirs)
    for mine, theirs in zip(separate.policy.parameters(), shared.policy.parameters(), strict=True):
        assert th.allclose(mine, theirs, rtol=1e-5, atol=1e-8)


def test_gradient_uses_the_whole_rollout_and_statistics_the_subset() -> None:
    whole, subset = (
        rollout_model(make_vec_env("CartPole-v1", n_envs=2, seed=0), stats_batch_size=None, stats_update_interval=1)
        for _ in "ab"
    )
    subset.stats_batch_size = 4
    for model in (whole, subset):
        set_random_seed(1)
        model.train()
    for mine, theirs in zip(subset.policy.parameters(), whole.policy.parameters(), strict=True):
        assert mine.grad is not None and theirs.grad is not None
        assert th.allclose(mine.grad, theirs.grad, rtol=1e-5, atol=1e-8)  # up to autograd's order of sums (see above)
    assert any(not th.equal(mine, theirs) for mine, theirs in zip(kfac_state(subset), kfac_state(whole), strict=True))


def test_subset_statistics_on_dict_observations_and_cnn() -> None:
    dict_model = rollout_model(
        SimpleMultiObsEnv(random_start=False), n_steps=16, policy="MultiInputPolicy", stats_batch_size=4
    )
    image_model = ACKTR("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=8, stats_batch_size=3, seed=0)
    image_model.set_logger(Logger(None, []))
    image_model.learn(16)
    for model in (dict_model, image_model):
        assert model.kfac.state[model.kfac.blocks[0].weight]["statistics_count"] == model._n_updates
        assert all(bool(th.isfinite(p).all()) for p in model.policy.parameters())
        assert_no_numerical_trouble(model.kfac)


def test_auto_subset_size_follows_the_network() -> None:
    assert resolve_stats_batch_size("auto", 640, convolutional=True) == 160  # a quarter
    assert resolve_stats_batch_size("auto", 2000, convolutional=True) == 500
    assert resolve_stats_batch_size("auto", 320, convolutional=True) == 160  # at least 160
    assert resolve_stats_batch_size("auto", 100, convolutional=True) == 160  # no subset of a smaller rollout
    assert statistics_subset(100, 160, th.device("cpu")) is None
    assert resolve_stats_batch_size("auto", 2000, convolutional=False) is None
    assert resolve_stats_batch_size(None, 2000, convolutional=True) is None
    assert resolve_stats_batch_size(64, 2000, convolutional=False) == 64
    # Ranks share the one-process rule on their joined batch: 4 x 640 examples -> 640 of them, 160 per rank.
    assert resolve_stats_batch_size("auto", 640, convolutional=True, world_size=4) == 160
    assert resolve_stats_batch_size("auto", 100, convolutional=True, world_size=2) == 80  # 160 of the joined 200
    assert resolve_stats_batch_size("auto", 100, convolutional=True, world_size=3) == 54  # 160 of 300, rounded up
    assert resolve_stats_batch_size(64, 2000, convolutional=True, world_size=4) == 64


@pytest.mark.parametrize("policy", ["MlpPolicy", "CnnPolicy"])
def test_default_statistics_use_a_subset_for_convolutions_only(policy: str) -> None:
    """
    By default a convolutional policy's statistics come from 160 of 200 examples at every update, an MLP's from the
    whole rollout every 4 updates.
    """
    env_id = (lambda: FakeImageEnv(screen_height=36, screen_width=36)) if policy == "CnnPolicy" else "CartPole-v1"
    model = rollout_model(make_vec_env(env_id, n_envs=2), n_steps=100, policy=policy)
    assert model.stats_batch_size == "auto"
    sizes = []
    update_statistics = model._update_statistics

    def recording_update(observations: th.Tensor) -> None:
        sizes.append(len(observations))
        update_statistics(observations)

    model._update_statistics = recording_update  # type: ignore[method-assign,assignment]
    model.train()
    convolutional = policy == "CnnPolicy"
    assert sizes == ([160] if convolutional else [])
    # Every update for convolutions, every 4 otherwise: the MLP's second update took none.
    assert model.kfac.stats_update_interval == (1 if convolutional else 4)
    assert model.kfac.state[model.kfac.blocks[0].weight]["statistics_count"] == (2 if convolutional else 1)
    assert_no_numerical_trouble(model.kfac)


@pytest.mark.parametrize("value", [0, 1, 2.5, True, "half"])
def test_invalid_stats_batch_size_is_named(value) -> None:
    with pytest.raises(ValueError, match="stats_batch_size"):
        ACKTR("MlpPolicy", "CartPole-v1", stats_batch_size=value)


def test_cnn_policy_uses_the_papers_network_unless_told_otherwise() -> None:
    env = FakeImageEnv(screen_height=84, screen_width=84)
    default = ACKTR("CnnPolicy", env)
    assert isinstance(default.policy.features_extractor, AcktrCNN)
    nature = ACKTR("CnnPolicy", env, policy_kwargs=dict(features_extractor_class=NatureCNN))
    assert isinstance(nature.policy.features_extractor, NatureCNN)
    # The fully connected layer, whose Kronecker factor dominates K-FAC's cost, has half NatureCNN's inputs.
    widths = [model.policy.features_extractor.get_submodule("linear.0").in_features for model in (default, nature)]
    assert widths == [32 * 7 * 7, 64 * 7 * 7]
    # The action and value layers read the 512 features directly, as in the paper's network; net_arch adds layers.
    for model in (default, nature):
        assert model.policy.action_net.in_features == model.policy.value_net.in_features == 512
        assert not list(model.policy.mlp_extractor.parameters())
    layered = ACKTR("CnnPolicy", env, policy_kwargs=dict(net_arch=dict(pi=[64, 64], vf=[32])))
    assert (layered.policy.action_net.in_features, layered.policy.value_net.in_features) == (64, 32)


def test_acktr_cnn_computes_channels_last_what_it_would_channels_first() -> None:
    env = FakeImageEnv(screen_height=84, screen_width=84, n_channels=4)
    extractor = ACKTR("CnnPolicy", env, seed=0).policy.features_extractor
    assert isinstance(extractor, AcktrCNN)
    observations = th.rand(5, 4, 84, 84)
    convolutions = [module for module in extractor.cnn if isinstance(module, nn.Conv2d)]
    layouts: list[tuple[bool, bool]] = []

    def record_layout(module: nn.Module, args: tuple[th.Tensor]) -> None:
        layouts.append((args[0].is_contiguous(), args[0].is_contiguous(memory_format=th.channels_last)))

    hooks = [convolution.register_forward_pre_hook(record_layout) for convolution in convolutions]
    features = extractor(observations)
    for hook in hooks:
        hook.remove()
    assert layouts == [(False, True)] * 3  # every convolution is fed channels last
    assert th.allclose(features, extractor.linear(extractor.cnn(observations)), atol=1e-5)


@pytest.mark.parametrize("share_features_extractor", [True, False])
def test_cnn_policy_hands_its_extractors_channels_last_images(share_features_extractor: bool) -> None:
    env = FakeImageEnv(screen_height=84, screen_width=84, n_channels=4)
    policy = ACKTR("CnnPolicy", env, policy_kwargs=dict(share_features_extractor=share_features_extractor), seed=0).policy
    extractors = [policy.features_extractor]
    if not share_features_extractor:
        extractors = [policy.pi_features_extractor, policy.vf_features_extractor]
    pixels = th.randint(0, 256, (5, 4, 84, 84), dtype=th.uint8)
    received: list[th.Tensor] = []
    hooks = [extractor.register_forward_pre_hook(lambda module, args: received.append(args[0])) for extractor in extractors]
    features = policy.extract_features(pixels)
    for hook in hooks:
        hook.remove()
    assert len(received) == len(extractors)
    for images in received:
        assert images.dtype == th.float32 and images.is_contiguous(memory_format=th.channels_last)
        assert th.equal(images, pixels.float() / 255.0)
    expected = [extractor(pixels.float() / 255.0) for extractor in extractors]
    for computed, reference in zip(features if isinstance(features, tuple) else (features,), expected, strict=True):
        assert th.allclose(computed, reference, atol=1e-5)
