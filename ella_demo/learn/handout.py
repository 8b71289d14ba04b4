"""A lesson as files a teacher can hand out: its figures (PNG), its numbers (JSON) and a Markdown page."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ella_demo.learn.base import LessonResult


def markdown(result: LessonResult, figure_folder: str = ".") -> str:
    """The lesson's page: title, what to look for, the evidence (labelled measured or cited), settings, figures."""
    label = "Measured here" if result.evidence.kind == "measured" else "Cited from the paper"
    settings = ", ".join(f"{name} {value}" for name, value in result.settings.items() if "prompt" not in name)
    lines = [
        f"# {result.title}",
        "",
        result.look_for,
        "",
        f"**{label}.** {result.evidence.text}",
        "",
        f"Settings: {settings}. Command: `{command(result)}`.",
        "",
    ]
    lines += [f"![{name}]({figure_folder}/{name}.png)\n" for name in result.figures]
    return "\n".join(lines)


def command(result: LessonResult) -> str:
    """The command line that runs the lesson again with the same settings (on the same preset)."""
    settings = result.settings
    words = ["python", "-m", "ella_demo", "learn", result.name, "--preset", str(settings.get("preset", "pocket"))]
    flags = {"seed": "--seed", "seeds": "--seeds", "num_inference_steps": "--steps", "guidance_scale": "--guidance",
             "prompt": "--prompt", "second_prompt": "--second-prompt"}  # fmt: skip
    for name, flag in flags.items():
        if name in settings:
            words += [flag, str(settings[name])]
    return shlex.join(words)


def write_handout(result: LessonResult, folder: Path) -> list[Path]:
    """Write NAME.png for each figure, numbers.json and README.md into `folder` (made if missing); the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in result.figures.items():
        image.save(folder / f"{name}.png")
        written.append(folder / f"{name}.png")
    (folder / "numbers.json").write_text(json.dumps(result.as_json(), indent=2) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(markdown(result), encoding="utf-8")
    return [*written, folder / "numbers.json", folder / "README.md"]
