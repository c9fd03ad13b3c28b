"""The README's library example runs as written (on the embedded model, in a scratch folder)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_example_runs(tmp_path, monkeypatch):
    (block,) = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert (tmp_path / "red.safetensors").is_file()
    assert (tmp_path / "red-lora.safetensors").is_file()
    assert (tmp_path / "erased-model" / "model_index.json").is_file()
