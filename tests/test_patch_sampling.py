"""Convolution input factors from a random sample of the batch's patches (``patches_per_feature``)."""

import copy
from pathlib import Path
from typing import cast

import pytest
import torch as th
from conftest import assert_no_numerical_trouble
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import set_random_seed
from torch import nn

from sb3_acktr import ACKTR
from sb3_acktr.kfac import KFAC, KroneckerBlock

DTYPE = th.float64
CONVOLUTIONS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 4), stride=(1, 2), padding=(1, 0), dilation=(2, 1)),
    dict(kernel_size=8, stride=4, bias=False),
]


def heterogeneous_images(batch_size: int = 6) -> th.Tensor:
    """Examples of different scales, so that a biased choice of patches would show."""
    scales = th.linspace(0.1, 3.0, batch_size, dtype=DTYPE).reshape(-1, 1, 1, 1)
    return th.randn(batch_size, 3, 17, 15, dtype=DTYPE) * scales


def factor(columns: th.Tensor) -> th.Tensor:
    return columns @ columns.T / columns.shape[1]


@pytest.mark.parametrize("conv_kwargs", CONVOLUTIONS)
def test_every_patch_drawn_gives_the_whole_factor(conv_kwargs: dict) -> None:
    """Drawn in another order, the batch's patches are the unfolded input's columns: the same factor."""
    th.manual_seed(0)
    block = KroneckerBlock("conv", nn.Conv2d(3, 5, **conv_kwargs).to(DTYPE))
    inputs = heterogeneous_images()
    patches = block.patches(inputs)  # (B, D, T)
    assert block.n_patches(inputs) == patches.shape[0] * patches.shape[2]
    whole = patches.transpose(0, 1).reshape(patches.shape[1], -1)
    drawn = block.sampled_patches(inputs, block.n_patches(inputs)).T
    assert drawn.shape == whole.shape
    assert th.allclose(factor(drawn), factor(whole), atol=1e-12)


@pytest.mark.parametrize("conv_kwargs", CONVOLUTIONS)
@pytest.mark.parametrize("in_channels", [1, 3, 8])
def test_both_gathers_draw_the_same_patches(conv_kwargs: dict, in_channels: int) -> None:
    """
    Gathered channels first or channels last (chosen by shape and layout for speed), from an input in either layout:
    the same patches, the unfolded input's columns.
    """
    th.manual_seed(0)
    conv = nn.Conv2d(in_channels, 5, **conv_kwargs).to(DTYPE)
    block = KroneckerBlock("conv", conv)
    inputs = th.randn(4, in_channels, 17, 15, dtype=DTYPE)
    pad_h, pad_w = cast(tuple[int, int], conv.padding)
    padded = th.nn.functional.pad(inputs, (pad_w, pad_w, pad_h, pad_h))
    patches = block.patches(inputs)  # (B, D, T)
    width = conv(inputs).shape[3]
    drawn = th.randperm(block.n_patches(inputs))[:11]
    positions = drawn // patches.shape[2], drawn % patches.shape[2] // width, drawn % width
    expected = patches[positions[0], :, drawn % patches.shape[2]]
    channels_last = padded.contiguous(memory_format=th.channels_last)  # as AcktrCNN feeds its convolutions
    for gathered in (padded, channels_last):
        assert th.equal(block._patches_channels_first(gathered, positions), expected)
        assert th.equal(block._patches_channels_last(gathered, positions), expected)
    th.manual_seed(1)
    drawn_from_channels_first = block.sampled_patches(inputs, 11)
    th.manual_seed(1)
    assert th.equal(block.sampled_patches(inputs.contiguous(memory_format=th.channels_last), 11), drawn_from_channels_first)


@pytest.mark.parametrize("conv_kwargs", CONVOLUTIONS[1:3])
def test_sampled_activation_factor_is_unbiased(conv_kwargs: dict) -> None:
    """Monte Carlo: the mean of the sampled factors converges to the whole batch's; a fixed choice of patches does not."""
    th.manual_seed(0)
    conv = nn.Conv2d(3, 2, **conv_kwargs).to(DTYPE)
    inputs = heterogeneous_images()
    whole = KroneckerBlock("conv", conv).activation_factor(inputs)
    sampled = KroneckerBlock("conv", conv, patches_per_feature=2)
    assert sampled.max_patches is not None and sampled.max_patches < sampled.n_patches(inputs)
    samples = th.stack([sampled.activation_factor(inputs) for _ in range(4000)])
    standard_error = samples.std(dim=0) / len(samples) ** 0.5
    assert ((samples.mean(dim=0) - whole).abs() <= 5 * standard_error + 1e-12).all()
    first_example = KroneckerBlock("conv", conv).activation_factor(inputs[:1])  # every patch of the first example only
    assert ((first_example - whole).abs() > 5 * standard_error + 1e-12).any()


def test_only_the_convolutions_input_factors_are_sampled() -> None:
    """Linear layers, output factors and reduce mode keep every row; so does a cap above the batch's patches."""
    th.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 7, 2)).to(DTYPE)
    inputs = heterogeneous_images()

    def factors(**kwargs) -> list[th.Tensor]:
        optimizer = KFAC(model, stats_decay=0.0, **kwargs)
        with optimizer.capture_statistics():
            outputs = model(inputs)
        optimizer.update_statistics(outputs.square().sum())
        optimizer.remove_hooks()
        return [f for block in optimizer.blocks for f in optimizer.factors(block)]  # type: ignore[union-attr]

    exact = factors(patches_per_feature=None)
    conv_a, conv_g, linear_a, linear_g = factors(patches_per_feature=1)
    assert not th.allclose(conv_a, exact[0])
    assert th.equal(conv_g, exact[1]) and th.equal(linear_a, exact[2]) and th.equal(linear_g, exact[3])
    n_patches = 6 * 8 * 7  # B * T of the convolution, 27 features
    assert all(th.equal(a, b) for a, b in zip(factors(patches_per_feature=n_patches // 27 + 1), exact, strict=True))
    reduced_sampled, reduced_exact = factors(conv_mode="reduce", patches_per_feature=1), factors(conv_mode="reduce")
    assert all(th.equal(a, b) for a, b in zip(reduced_sampled, reduced_exact, strict=True))


def image_model(**kwargs) -> ACKTR:
    model = ACKTR("CnnPolicy", FakeImageEnv(screen_height=36, screen_width=36), n_steps=8, seed=0, **kwargs)
    model.set_logger(Logger(None, []))
    return model


def test_acktr_trains_and_resumes_with_sampled_patches(tmp_path: Path) -> None:
    model = image_model(patches_per_feature=1)
    assert all(block.max_patches == block.weight[0].numel() for block in model.kfac.blocks if block.is_conv)
    model.learn(8 * 4)
    assert_no_numerical_trouble(model.kfac)
    model.save(tmp_path / "acktr")
    loaded = ACKTR.load(tmp_path / "acktr", env=FakeImageEnv(screen_height=36, screen_width=36))
    loaded.set_logger(Logger(None, []))
    assert loaded.patches_per_feature == 1
    loaded.rollout_buffer = copy.deepcopy(model.rollout_buffer)
    for algorithm in (model, loaded):
        set_random_seed(123)
        algorithm.train()
    for original, restored in zip(model.policy.parameters(), loaded.policy.parameters(), strict=True):
        assert th.equal(original, restored)


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_invalid_patches_per_feature_is_named(value) -> None:
    with pytest.raises(ValueError, match="patches_per_feature"):
        ACKTR("MlpPolicy", "CartPole-v1", patches_per_feature=value)
    with pytest.raises(ValueError, match="patches_per_feature"):
        KFAC(nn.Linear(2, 2), patches_per_feature=value)


@pytest.mark.parametrize("conv_kwargs", CONVOLUTIONS)
@pytest.mark.parametrize("patches_per_feature", [None, 2])
def test_factors_do_not_depend_on_the_memory_layout(conv_kwargs: dict, patches_per_feature: int | None) -> None:
    """Channels-last inputs and output gradients (AcktrCNN's) give the factors of channels-first ones."""
    conv = nn.Conv2d(3, 5, **conv_kwargs).to(DTYPE)
    block = KroneckerBlock("conv", conv, patches_per_feature=patches_per_feature)
    inputs = heterogeneous_images()
    output_grad = th.randn_like(conv(inputs))
    channels_last = th.channels_last
    th.manual_seed(0)
    activation_factor = block.activation_factor(inputs)
    th.manual_seed(0)
    assert th.allclose(block.activation_factor(inputs.contiguous(memory_format=channels_last)), activation_factor, atol=1e-12)
    gradient_factor = block.gradient_factor(output_grad)
    assert th.allclose(block.gradient_factor(output_grad.contiguous(memory_format=channels_last)), gradient_factor, atol=1e-12)
