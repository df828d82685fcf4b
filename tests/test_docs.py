"""Every Python block of the README and of the documentation runs (with at most ``MAX_TIMESTEPS`` of training)."""

import re
from pathlib import Path

import pytest

from sb3_acktr import ACKTR

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MAX_TIMESTEPS = 4_000
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def python_blocks() -> list[tuple[str, str]]:
    blocks = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in PYTHON_BLOCK.finditer(text):
            line = text[: match.start()].count("\n") + 2
            blocks.append((f"{document.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


BLOCKS = python_blocks()


def test_the_documents_have_python_blocks() -> None:
    assert len(BLOCKS) >= 8
    assert {location.split(":")[0] for location, _ in BLOCKS} >= {"README.md", "docs/guide/examples.md"}


@pytest.mark.parametrize("location, code", BLOCKS, ids=[location for location, _ in BLOCKS])
def test_python_block_runs(location: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # files the block saves
    learn = ACKTR.learn

    def shorter_learn(self: ACKTR, total_timesteps: int, *args, **kwargs) -> ACKTR:
        return learn(self, min(total_timesteps, MAX_TIMESTEPS), *args, **kwargs)

    monkeypatch.setattr(ACKTR, "learn", shorter_learn)
    exec(compile(code, location, "exec"), {"__name__": "__main__"})
