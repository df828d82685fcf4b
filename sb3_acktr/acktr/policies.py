"""ACKTR's policy aliases: SB3's actor-critic policies, with the paper's network for images."""

from typing import Any

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule

from sb3_acktr.common.torch_layers import AcktrCNN

MlpPolicy = ActorCriticPolicy
MultiInputPolicy = MultiInputActorCriticPolicy


class CnnPolicy(ActorCriticCnnPolicy):
    """
    SB3's ``ActorCriticCnnPolicy`` with the ACKTR paper's network: :class:`~sb3_acktr.AcktrCNN` as default features
    extractor instead of ``NatureCNN`` (its fully connected layer has half the inputs, which makes the Kronecker factor
    that dominates K-FAC's cost four times smaller), and the action and value layers reading its features directly
    (``net_arch=[]``, as SB3 builds ``NatureCNN``'s policy). ``policy_kwargs=dict(features_extractor_class=NatureCNN)``
    restores SB3's extractor; ``net_arch`` adds layers between the features and the heads.

    Image batches are made channels-last (``torch.channels_last``) before SB3 converts them to floats: the layout that
    PyTorch's CPU convolutions compute fastest, here obtained by copying the 1-byte pixels rather than the 4-byte floats.

    See ``ActorCriticCnnPolicy`` for the parameters (all but the first three by keyword).
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        *,
        features_extractor_class: type[BaseFeaturesExtractor] = AcktrCNN,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("normalize_images", True) and issubclass(features_extractor_class, AcktrCNN):
            # What SB3 does for NatureCNN: images that are already normalised (floats, any bounds) are taken as they are.
            kwargs["features_extractor_kwargs"] = dict(kwargs.get("features_extractor_kwargs") or {}, normalized_image=True)
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            features_extractor_class=features_extractor_class,
            net_arch=[] if net_arch is None else net_arch,
            **kwargs,
        )

    def extract_features(  # type: ignore[override]
        self, obs: PyTorchObs, features_extractor: BaseFeaturesExtractor | None = None
    ) -> th.Tensor | tuple[th.Tensor, th.Tensor]:
        if isinstance(obs, th.Tensor) and obs.dim() == 4:
            obs = obs.contiguous(memory_format=th.channels_last)
        return super().extract_features(obs, features_extractor)
