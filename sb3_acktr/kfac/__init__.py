"""A Kronecker-factored natural-gradient optimizer for ``nn.Linear`` and ``nn.Conv2d`` layers."""

from sb3_acktr.kfac.blocks import KroneckerBlock, is_supported_layer
from sb3_acktr.kfac.inverses import BlockInverse, InverseFailure, compute_inverse
from sb3_acktr.kfac.optimizer import KFAC

__all__ = ["KFAC", "BlockInverse", "InverseFailure", "KroneckerBlock", "compute_inverse", "is_supported_layer"]
