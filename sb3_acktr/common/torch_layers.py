"""Feature extractors suited to K-FAC."""

import gymnasium as gym
import torch as th
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


class AcktrCNN(BaseFeaturesExtractor):
    """
    The Atari network of the ACKTR paper and OpenAI Baselines: SB3's ``NatureCNN`` with 32 instead of 64 channels in
    its last convolution. The fully connected layer then has 1568 + 1 inputs instead of 3136 + 1, which makes its
    Kronecker factor, the largest to invert and to precondition with, four times smaller.

    Use with ``policy_kwargs=dict(features_extractor_class=AcktrCNN)``.

    The observations enter the convolutions channels-last (``torch.channels_last``), for which PyTorch's CPU kernels
    compute the backward pass much faster (see ``docs/misc/cost.md``); the values are the same up to rounding, and
    the parameters (their names, shapes and layout) those of a channels-first network.

    :param observation_space: an image space (channels first after SB3's automatic transposition)
    :param features_dim: number of features (units of the fully connected layer)
    :param normalized_image: whether the images are already normalized (as in ``NatureCNN``)
    """

    def __init__(self, observation_space: gym.Space, features_dim: int = 512, normalized_image: bool = False) -> None:
        assert isinstance(observation_space, gym.spaces.Box), (
            f"AcktrCNN needs a Box observation space, got {observation_space}"
        )
        super().__init__(observation_space, features_dim)
        if not is_image_space(observation_space, check_channels=False, normalized_image=normalized_image):
            raise ValueError(f"AcktrCNN needs an image observation space (channels first), got {observation_space}")
        n_input_channels = observation_space.shape[0]
        self.cnn = nn.Sequential(
            nn.Conv2d(n_input_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 32, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with th.no_grad():
            n_flatten = self.cnn(th.as_tensor(observation_space.sample()[None]).float()).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flatten, features_dim), nn.ReLU())

    def forward(self, observations: th.Tensor) -> th.Tensor:
        return self.linear(self.cnn(observations.contiguous(memory_format=th.channels_last)))
