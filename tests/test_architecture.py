"""The layering rules README.md's Development section states, checked on the package's source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ella_demo"
SUBPACKAGES = ("core", "loading", "inspect", "app", "dpg", "cli", "bench", "train", "pocket", "learn")
# The pocket world itself: scenes, pictures, words, questions and the detector. No models; of ours, only the
# DPG-Bench file format (dpg/data.py), which its question graphs are written in.
POCKET_TRAINING_LAYERS = ("pocket", "train", "core", "loading", "inspect", "dpg")
POCKET_WORLD = ("vocabulary", "scenes", "render", "queries", "captions", "questions", "detector")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Calls that read weights from the hub or the disk; they belong in loading/.
# The core modules that hold or run models: inspect works on what they return, never calls them.
MODEL_RUNNERS = (
    "ella_demo.core.models",
    "ella_demo.core.engine",
    "ella_demo.core.conditioning",
    "ella_demo.core.connector",
)
WEIGHT_READERS = ("from_pretrained", "from_single_file", "snapshot_download", "hf_hub_download", "safe_open")


def modules(subpackage: str | None = None) -> list[Path]:
    root = PACKAGE / subpackage if subpackage else PACKAGE
    return sorted(root.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every ella_demo module `path` imports, at any level of the file (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("ella_demo")}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in SUBPACKAGES else None


def test_every_subpackage_exists():
    assert all((PACKAGE / name / "__init__.py").is_file() for name in SUBPACKAGES)


@pytest.mark.parametrize("path", modules("core"), ids=lambda path: path.name)
def test_core_imports_nothing_from_the_other_subpackages(path):
    outside = {module for module in imported_modules(path) if layer_of(module) not in ("core", None)}
    assert not outside, f"{path.name} imports {sorted(outside)}"


@pytest.mark.parametrize("path", modules("inspect"), ids=lambda path: path.name)
def test_inspect_takes_results_and_arrays_never_a_model(path):
    for module in imported_modules(path):
        assert layer_of(module) in ("inspect", "core", None), f"{path.name} imports {module}"
        assert not module.startswith(MODEL_RUNNERS), f"{path.name} imports {module}, which holds or runs models"
    assert "LoadedModels" not in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", modules("train"), ids=lambda path: path.name)
def test_training_builds_on_the_library_not_on_its_front_ends(path):
    for module in imported_modules(path):
        assert layer_of(module) in ("train", "core", "loading", "inspect", None), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", modules("pocket"), ids=lambda path: path.name)
def test_the_pocket_world_stands_alone_and_its_training_builds_on_the_library(path):
    for module in imported_modules(path):
        parts = module.split(".")
        if path.stem in POCKET_WORLD:
            in_world = parts[:2] == ["ella_demo", "pocket"] and (len(parts) == 2 or parts[2] in POCKET_WORLD)
            assert in_world or parts[:3] == ["ella_demo", "dpg", "data"], f"{path.name} imports {module}"
        else:
            assert layer_of(module) in POCKET_TRAINING_LAYERS, f"{path.name} imports {module}"


@pytest.mark.parametrize("path", modules("learn"), ids=lambda path: path.name)
def test_lessons_build_on_the_engine_the_views_and_the_pocket_detector_never_on_loading_or_front_ends(path):
    for module in imported_modules(path):
        parts = module.split(".")
        if layer_of(module) == "pocket":
            assert len(parts) > 2 and parts[2] in POCKET_WORLD, f"{path.name} imports {module}"
        else:
            assert layer_of(module) in ("learn", "core", "inspect", None), f"{path.name} imports {module}"


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_only_loading_reads_weights(path):
    if layer_of("ella_demo." + ".".join(path.relative_to(PACKAGE).parts)) == "loading":
        return
    calls = {
        node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
    }
    assert not calls & set(WEIGHT_READERS), f"{path.relative_to(PACKAGE)} reads weights: {calls & set(WEIGHT_READERS)}"


def test_no_module_is_over_the_line_limit():
    lengths = {str(path.relative_to(PACKAGE)): len(path.read_text().splitlines()) for path in modules()}
    assert not {name: count for name, count in lengths.items() if count > MAX_MODULE_LINES}


def test_no_function_is_over_the_line_limit():
    long = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long


def test_the_public_imports_stay():
    import ella_demo

    assert {"ELLA", "generate", "load_models"} <= set(ella_demo.__all__)
    assert callable(ella_demo.generate) and callable(ella_demo.load_models)
