import os

from sb3_acktr.acktr import ACKTR
from sb3_acktr.common.torch_layers import AcktrCNN
from sb3_acktr.kfac import KFAC

# Read version from file
version_file = os.path.join(os.path.dirname(__file__), "version.txt")
with open(version_file) as file_handler:
    __version__ = file_handler.read().strip()

__all__ = ["ACKTR", "KFAC", "AcktrCNN", "__version__"]
