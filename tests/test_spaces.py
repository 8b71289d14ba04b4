"""The Space deployment: front matter, pinned requirements, and the ZeroGPU guard."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SPACE = REPO_ROOT / "spaces"


def front_matter() -> dict:
    text = (SPACE / "README.md").read_text()
    match = re.match(r"^---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "spaces/README.md must start with YAML front matter"
    return yaml.safe_load(match.group(1))


def pins(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("==") for line in lines)


def load_space_app(module_name: str):
    spec = importlib.util.spec_from_file_location(module_name, SPACE / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_front_matter_describes_a_gradio_space_on_the_pinned_version():
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert meta["sdk_version"] == pins(REPO_ROOT / "requirements.txt")["gradio"]
    assert (SPACE / meta["app_file"]).is_file()
    assert str(meta["python_version"]).startswith("3.")
    assert {"stable-diffusion-v1-5/stable-diffusion-v1-5", "QQGYLab/ELLA"} <= set(meta["models"])
    assert meta["suggested_hardware"]


def test_space_requirements_match_the_project_pins():
    project, space = pins(REPO_ROOT / "requirements.txt"), pins(SPACE / "requirements.txt")
    assert "gradio" not in space  # the Space installs gradio from sdk_version
    assert "spaces" in space
    for name, version in space.items():
        if name != "spaces":
            assert project[name] == version, name


def test_without_the_spaces_package_the_gpu_wrapper_does_nothing(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "spaces", None)  # makes `import spaces` fail
    module = load_space_app("space_app_plain")

    def handler():
        return "ran"

    assert module.gpu_wrapper(handler) is handler


def test_with_zerogpu_the_handlers_are_wrapped(monkeypatch, tiny):
    wrapped = []

    def fake_gpu(duration):
        def decorate(function):
            wrapped.append((function.__name__, duration))
            return function

        return decorate

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=fake_gpu))
    module = load_space_app("space_app_zerogpu")
    monkeypatch.setattr(module, "load_models", lambda preset: tiny)
    app = module.create_app("tiny")
    assert sorted(name for name, _ in wrapped) == ["_generate_on_device", "_probe_on_device", "_run_on_device"]
    assert all(duration == module.GPU_SECONDS for _, duration in wrapped)
    assert app.title == "ELLA Explorer"
