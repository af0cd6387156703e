"""Every ```python block and every ```sh command of the README and of the reference pages in docs/ runs as it is,
from the repository layout."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
FINDINGS = ("inspect", "diagnose")  # documented: exit 1 when they find a problem


PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def _blocks(kind):
    return [b for page in PAGES for b in re.findall(rf"```{kind}\n(.*?)```", open(page).read(), re.S)]


def test_the_readme_links_every_reference_page():
    readme = open(PAGES[0]).read()
    for page in PAGES[1:]:
        assert f"docs/{os.path.basename(page)}" in readme, page


def _workspace(tmp_path):
    os.symlink(os.path.join(ROOT, "fixtures"), tmp_path / "fixtures")
    bin_dir = os.path.dirname(sys.executable)
    return {**os.environ, "PYTHONPATH": ROOT, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}


def test_readme_python_blocks_run(tmp_path):
    blocks = _blocks("python")
    assert blocks, "the README has no python example"
    env = _workspace(tmp_path)
    for i, code in enumerate(blocks):
        run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env)
        assert run.returncode == 0, f"README python block {i + 1}:\n{run.stderr[-3000:]}"
    assert (tmp_path / "out" / "lib" / "from_builder.onnx").exists()


@pytest.mark.slow
def test_readme_commands_run(tmp_path, run_cli):
    """Each command line as the shell splits it, through the CLI's entry point (in this process: the command
    line is what is checked; tests/test_cli.py checks what only a process shows)."""
    blocks = _blocks("sh")
    assert blocks, "the README has no command walkthrough"
    _workspace(tmp_path)
    for block in blocks:
        for line in block.splitlines():
            command = line.split("#")[0].strip()
            if not command:
                continue
            words = shlex.split(command)
            assert words[0] == "ckptkit", command
            run = run_cli(*words[1:], cwd=tmp_path)
            allowed = (0, 1) if words[1] in FINDINGS else (0,)
            assert run.returncode in allowed, f"{command}\n{run.stderr[-3000:]}"
            assert "Traceback" not in run.stderr, command
    assert (tmp_path / "models" / "fixed.onnx").exists() and (tmp_path / "folded.onnx").exists()
