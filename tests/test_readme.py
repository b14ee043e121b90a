"""The README's Python examples run as written (in order, in one namespace)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_python_examples_run(capsys):
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
  assert len(blocks) >= 2
  namespace = {}
  for block in blocks:
    exec(compile(block, str(README), "exec"), namespace)  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "def add(a, b):" in printed and "x = " in printed  # both texts came back filled
  assert namespace["out"].tokens.shape == namespace["tokens"].shape
