"""Project-level promises: CI runs the README's test command, and the layout is the agreed one."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import resources
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


def test_a_wheel_holds_the_package_data(tmp_path):
    """`pip install .` keeps what the package reads at run time: configs, vocabulary, example prompts."""
    # Built from a copy of what the build reads: setuptools writes build/ and *.egg-info/ beside it.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT / "ella_demo", source / "ella_demo", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "dist").glob("ella_explorer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in (
        "ella_demo/app/example_prompts.json",
        "ella_demo/loading/vocabulary.txt",
        "ella_demo/loading/configs/sd15/unet/config.json",
        "ella_demo/loading/configs/sd15/scheduler/scheduler_config.json",
        "ella_demo/loading/configs/tiny/ella.json",
        "ella_demo/loading/configs/flan_t5_xl_encoder/config.json",
    ):
        assert expected in names, expected
    shipped = {name.removeprefix("ella_demo/") for name in names if name.startswith("ella_demo/loading/configs/")}
    in_repo = {
        str(path.relative_to(REPO_ROOT / "ella_demo"))
        for path in (REPO_ROOT / "ella_demo" / "loading" / "configs").rglob("*.json")
    }
    assert shipped == in_repo


def test_the_example_prompts_are_read_from_the_package():
    from ella_demo.app.compare_tab import example_prompts

    shipped = json.loads(resources.files("ella_demo.app").joinpath("example_prompts.json").read_text(encoding="utf-8"))
    assert example_prompts() == [entry["prompt"] for entry in shipped if "preset" not in entry]
    assert example_prompts("pocket") == [entry["prompt"] for entry in shipped if entry.get("preset") == "pocket"]


def test_tests_and_package_need_nothing_outside_the_repository():
    """A user's clone has no shared folder beside it and no design notes: nothing may read or cite them."""
    outside = ("../shared", "shared/", '"shared" /', "DESIGN.md")
    for folder in ("ella_demo", "tests"):
        for path in (REPO_ROOT / folder).rglob("*.py"):
            if path == Path(__file__).resolve():
                continue
            text = path.read_text(encoding="utf-8")
            for name in outside:
                assert name not in text, f"{path.relative_to(REPO_ROOT)} mentions {name}"
