"""Answering DPG-Bench questions: a file of answers computed elsewhere, or a transformers VQA model.

Backends are named on the command line: `answers:FILE` re-scores answers from any pipeline (CSV
with header item_id,tile,proposition_id,answer; tiles 0-3 row-major: top-left, top-right,
bottom-left, bottom-right), and `blip` / `blip:REPO_OR_FOLDER` asks BLIP VQA
(default Salesforce/blip-vqa-base; the paper used mPLUG-large, which is not on transformers).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ella_demo.dpg.data import TILES, DpgBench, DpgDataError, read_csv_rows
from ella_demo.loading.vqa import DEFAULT_BLIP, load_blip_vqa

ANSWER_COLUMNS = ("item_id", "tile", "proposition_id", "answer")


def read_answers(path: str | Path) -> dict[tuple[str, int, int], str]:
    """(item_id, tile, proposition_id) -> answer, from a CSV computed elsewhere."""
    path = Path(path)
    answers = {}
    for number, row in enumerate(read_csv_rows(path, ANSWER_COLUMNS, "give the answers file's path"), start=2):
        try:
            tile, proposition = int(row["tile"]), int(row["proposition_id"])
        except ValueError as error:
            raise DpgDataError(f"{path} row {number}: tile and proposition_id must be integers") from error
        if not 0 <= tile < TILES:
            raise DpgDataError(f"{path} row {number}: tile must be 0-3 (row-major), got {tile}")
        answers[(row["item_id"].strip(), tile, proposition)] = row["answer"]
    return answers


def split_grid(grid: Image.Image) -> list[Image.Image]:
    """A 2x2 grid -> its 4 tiles, row-major (top-left, top-right, bottom-left, bottom-right)."""
    width, height = grid.size
    half_w, half_h = width // 2, height // 2
    return [
        grid.crop((col * half_w, row * half_h, (col + 1) * half_w, (row + 1) * half_h))
        for row in range(2)
        for col in range(2)
    ]


class BlipAnswerer:
    """BLIP visual question answering through transformers (safetensors weights only)."""

    def __init__(self, source: str = DEFAULT_BLIP, device: str = "cpu"):
        self.device = torch.device(device)
        self.processor, self.model = load_blip_vqa(source, self.device)

    def __call__(self, image: Image.Image, questions: list[str]) -> list[str]:
        inputs = self.processor(images=[image] * len(questions), text=questions, return_tensors="pt", padding=True)
        with torch.no_grad():
            generated = self.model.generate(**inputs.to(self.device), max_new_tokens=5)
        return [answer.strip() for answer in self.processor.batch_decode(generated, skip_special_tokens=True)]


def answer_with_model(bench: DpgBench, images_dir: str | Path, answerer) -> tuple[dict, list[str]]:
    """Ask `answerer(image, questions) -> answers` about every tile of every scored item.

    Returns the answers keyed (item_id, tile, proposition_id) and notes about missing grids.
    """
    folder = Path(images_dir)
    answers, notes = {}, []
    for item, questions in sorted(bench.questions.items()):
        path = folder / f"{item}.png"
        if not path.is_file():
            notes.append(f"no image grid for item {item} ({path.name}); its questions count as unanswered")
            continue
        for tile, image in enumerate(split_grid(Image.open(path).convert("RGB"))):
            replies = answerer(image, [question.text for question in questions])
            for question, reply in zip(questions, replies, strict=True):
                answers[(item, tile, question.proposition_id)] = reply
    return answers, notes


def make_answerer(backend: str, device: str = "cpu"):
    """`blip` or `blip:SOURCE` -> a callable answerer. (`answers:FILE` is read with read_answers.)"""
    name, _, source = backend.partition(":")
    if name == "blip":
        return BlipAnswerer(source or DEFAULT_BLIP, device)
    raise DpgDataError(f"unknown VQA backend {backend!r}: use answers:FILE, blip or blip:REPO_OR_FOLDER")
