"""Tests for pipeline.tools.cli: the ``segpipe`` console script and every command's --help."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.tools.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_installs_segpipe_pointing_at_this_main() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]  # tomllib is Python 3.11+
    module, func = re.search(r'^segpipe = "([^"]+)"', scripts, re.M).group(1).split(":")
    assert module == "pipeline.tools.cli" and func == "main"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_help_states_inputs_outputs_and_exit_status(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0" in text and "output" in text and "usage:" in text
    assert ("input" in text) or ("positional arguments" in text)


def test_top_level_help_lists_commands_and_unknown_command_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in COMMANDS)
    assert main(["frobnicate"]) == 2 and "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 2


def test_dispatch_runs_the_tool_with_its_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nowhere")]) == 1  # validate's own status for a problem
    assert "dataset folder not found" in capsys.readouterr().out


def test_python_dash_m_forms_keep_working() -> None:
    for args in (["-m", "pipeline", "--help"], ["-m", "pipeline.tools.validate", "--help"]):
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0 and "usage" in proc.stdout, proc.stderr


@pytest.mark.skipif(shutil.which("segpipe") is None, reason="segpipe not installed (pip install -e .)")
def test_installed_console_script() -> None:
    proc = subprocess.run(["segpipe", "compare", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "exit status" in proc.stdout
