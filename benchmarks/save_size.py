"""
Size of a saved model (the zip of ``model.save``) for ACKTR and A2C, on Atari-shaped frames and on CartPole.

    python benchmarks/save_size.py

Each model trains a few updates on a fake 84x84x4 image environment (or CartPole) so that every K-FAC block has its
averaged factors and an inverse, then is saved; the sizes of the whole zip and of its optimizer state are printed.
"""

import tempfile
import zipfile
from pathlib import Path
from typing import Any

from stable_baselines3 import A2C
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.envs import FakeImageEnv
from stable_baselines3.common.torch_layers import NatureCNN

from sb3_acktr import ACKTR, AcktrCNN

MIB = 2**20


def saved_sizes(model: BaseAlgorithm, folder: Path) -> tuple[float, float]:
    """MiB of the whole zip and of its optimizer state."""
    path = folder / "model.zip"
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        optimizer = archive.getinfo("policy.optimizer.pth").compress_size
    return path.stat().st_size / MIB, optimizer / MIB


def main() -> None:
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("AcktrCNN (ACKTR's CnnPolicy)", "CnnPolicy", dict(features_extractor_class=AcktrCNN)),
        ("NatureCNN", "CnnPolicy", dict(features_extractor_class=NatureCNN)),
        ("MlpPolicy 64-64 (CartPole)", "MlpPolicy", {}),
    ]
    print("| network | algorithm | zip MiB | optimizer state MiB |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name, policy, policy_kwargs in cases:
            frames = FakeImageEnv(screen_height=84, screen_width=84, n_channels=4)
            env: Any = frames if policy == "CnnPolicy" else "CartPole-v1"
            for algo_class in (ACKTR, A2C):
                model = algo_class(policy, env, n_steps=8, seed=0, device="cpu", policy_kwargs=policy_kwargs)
                model.learn(8 * 3)
                total, optimizer = saved_sizes(model, Path(folder))
                print(f"| {name} | {algo_class.__name__} | {total:.1f} | {optimizer:.1f} |", flush=True)


if __name__ == "__main__":
    main()
