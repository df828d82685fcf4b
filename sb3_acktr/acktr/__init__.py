from sb3_acktr.acktr.acktr import ACKTR

__all__ = ["ACKTR"]
