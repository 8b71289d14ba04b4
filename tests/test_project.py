"""Project-level promises: CI runs the README's test command, and the layout is the agreed one."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def test_ci_runs_the_readme_test_command_verbatim():
    test_commands = [command for command in readme_commands() if "pytest" in command]
    assert len(test_commands) == 1
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert test_commands[0] in ci_lines


def test_ci_sets_offline_mode_and_disables_gradio_analytics():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "export HF_HUB_OFFLINE=1" in ci
    assert "export GRADIO_ANALYTICS_ENABLED=False" in ci


def test_top_level_layout():
    for name in ("app.py", "README.md", "ella_demo", "assets", "tests", "requirements.txt", "spaces", "pyproject.toml"):
        assert (REPO_ROOT / name).exists(), name


def test_requirements_pin_every_package():
    for line in (REPO_ROOT / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][\w.]*", line), f"unpinned requirement: {line}"


def test_app_reports_a_loaded_preset():
    result = subprocess.run(
        [sys.executable, "app.py", "--preset", "tiny", "--device", "cpu", "--check"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "Loaded preset tiny on cpu (fp32, T5 in fp32)" in result.stdout
    assert "Random weights" in result.stdout


def test_app_reports_bad_choices_as_an_error_message():
    result = subprocess.run(
        [sys.executable, "app.py", "--preset", "tiny", "--device", "cpu", "--dtype", "fp16"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "error: dtype fp16 is not supported on cpu" in result.stderr
