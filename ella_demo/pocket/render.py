"""Drawing a pocket scene: shapes drawn 4x larger with PIL, then reduced to the picture's size (anti-aliased edges)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ella_demo.pocket.scenes import RESOLUTION, Scene
from ella_demo.pocket.vocabulary import BACKGROUNDS, COLOURS, SIZE_PIXELS

SUPERSAMPLE = 4
OUTLINE_FRACTION = 0.12  # outline width of the "outlined" style, as a fraction of the side


def render(scene: Scene, resolution: int = RESOLUTION) -> Image.Image:
    """The scene as an RGB picture of resolution x resolution (positions scale from the 64 px layout)."""
    scale = SUPERSAMPLE * resolution / RESOLUTION
    canvas = Image.new("RGB", (round(RESOLUTION * scale),) * 2, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(canvas)
    for entity in scene.entities:
        side = SIZE_PIXELS[entity.size] * scale
        for x, y in entity.centres:
            outline = OUTLINE_FRACTION * side if scene.style == "outlined" else None
            _draw_shape(draw, entity.shape, (x * scale, y * scale), side, COLOURS[entity.colour], outline)
    return canvas.resize((resolution, resolution), Image.Resampling.BOX)


def render_array(scene: Scene, resolution: int = RESOLUTION) -> np.ndarray:
    """render() as a uint8 array of shape (resolution, resolution, 3)."""
    return np.asarray(render(scene, resolution))


def shape_outline(shape: str, centre: tuple[float, float], side: float) -> list[tuple[float, float]]:
    """The polygon of a shape's boundary in its side x side box (a circle as 48 points)."""
    x, y = centre
    half = side / 2
    if shape == "circle":
        angles = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return [(x + half * np.cos(a), y + half * np.sin(a)) for a in angles]
    if shape == "square":
        return [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
    if shape == "triangle":
        return [(x, y - half), (x + half, y + half), (x - half, y + half)]
    if shape == "cross":
        arm = side / 6  # half the width of an arm: arms are a third of the side wide
        points = [(-arm, -half), (arm, -half), (arm, -arm), (half, -arm), (half, arm), (arm, arm),
                  (arm, half), (-arm, half), (-arm, arm), (-half, arm), (-half, -arm), (-arm, -arm)]  # fmt: skip
        return [(x + dx, y + dy) for dx, dy in points]
    raise ValueError(f"unknown shape {shape!r}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre, side: float, colour, outline: float | None) -> None:
    polygon = shape_outline(shape, centre, side)
    if outline is None:
        draw.polygon(polygon, fill=colour)
    else:
        draw.polygon(polygon, outline=colour, width=max(1, round(outline)))
