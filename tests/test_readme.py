"""Every ```python block of the README runs as it is, from a copy of the repository's layout."""
import os
import re
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def test_readme_python_blocks_run(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no python example"
    os.symlink(os.path.join(ROOT, "fixtures"), tmp_path / "fixtures")
    for i, code in enumerate(blocks):
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT})
        assert run.returncode == 0, f"README python block {i + 1}:\n{run.stderr[-3000:]}"
    assert (tmp_path / "out" / "lib" / "from_builder.onnx").exists()
