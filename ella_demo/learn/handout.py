"""A lesson as files a teacher can hand out: its figures (PNG), its numbers (JSON) and a Markdown page."""

from __future__ import annotations

import json
from pathlib import Path

from ella_demo.learn.base import LessonResult


def markdown(result: LessonResult, figure_folder: str = ".") -> str:
    """The lesson's page: title, what to look for, the evidence (labelled measured or cited), settings, figures."""
    label = "Measured here" if result.evidence.kind == "measured" else "Cited from the paper"
    settings = ", ".join(f"{name} {value}" for name, value in result.settings.items())
    lines = [
        f"# {result.title}",
        "",
        result.look_for,
        "",
        f"**{label}.** {result.evidence.text}",
        "",
        f"Settings: {settings}. Command: `python -m ella_demo learn {result.name}`.",
        "",
    ]
    lines += [f"![{name}]({figure_folder}/{name}.png)\n" for name in result.figures]
    return "\n".join(lines)


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
