"""Image-caption training data: read with Hugging Face `datasets`, served as fixed-size pixel tensors.

A source is a local folder in `datasets`' imagefolder layout (the images plus `metadata.jsonl`, one
`{"file_name": "0001.png", "text": "a red cube left of a blue ball"}` a line; `metadata.csv` with
the same columns also works) or a hub dataset id (`org/name`). `load_image_captions` checks the
source before training starts and reduces it to two columns, "image" and "caption".

Each image becomes RGB, upright as its EXIF orientation says, its shorter side resized to the
training resolution and the rest centre-cropped away, scaled to [-1, 1]. There is no random
horizontal flip: captions name relations ("left of"), and a flipped image would contradict them.

`StepBatches` decides which samples every process reads for every micro-batch, from the seed and
the batch number alone, so a resumed run reads exactly what an uninterrupted one would.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch
from PIL import ImageOps
from torch.utils.data import DataLoader, Sampler

from ella_demo.core.errors import ExplorerError, InputError

EXAMPLE_LINE = '{"file_name": "0001.png", "text": "a red cube left of a blue ball"}'
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# A hub dataset id: "name" or "org/name". Anything else that does not exist is a mistyped path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
SHOWN_MISSING = 5


class TrainingDataError(ExplorerError):
    """Training data that cannot be used; the message names the file or column and says what to change."""


def load_image_captions(
    source: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "text",
    split: str = "train",
    cache_dir: str | Path | None = None,
) -> datasets.Dataset:
    """Image-caption pairs from a local image folder or a hub dataset, checked before any training.

    source: a folder with the images and metadata.jsonl (columns file_name, text; datasets'
    `imagefolder` layout; a folder's `image_column` is "image") or a hub dataset id. `split` selects
    a hub dataset's split (slices such as "train[:1000]" work); a local folder is read whole, as
    "train". Returns a Dataset with exactly two columns in the source's order: "image"
    (datasets.Image(decode=False): dicts {"path", "bytes"}) and "caption" (str, possibly empty).
    """
    if image_column == caption_column:
        raise TrainingDataError(f"image_column and caption_column are both {image_column!r}: they must differ.")
    folder = Path(source)
    if folder.is_dir():
        data = _load_folder(folder, caption_column, split, cache_dir)
    elif folder.exists():
        raise TrainingDataError(f"{folder} is a file: give the folder that holds the images and metadata.jsonl.")
    elif HUB_ID.fullmatch(str(source)):
        data = _load_dataset(str(source), str(source), split=split, cache_dir=cache_dir)
    else:
        raise TrainingDataError(
            f"{source} does not exist. Give an image folder with metadata.jsonl, or a hub dataset id, "
            "which looks like org/name."
        )
    if len(data) == 0:
        raise TrainingDataError(f"{source} (split {split!r}) has no rows: training needs at least one image.")
    _check_columns(data, str(source), image_column, caption_column)
    _check_captions(data, str(source), caption_column)
    renames = {old: new for old, new in ((image_column, "image"), (caption_column, "caption")) if old != new}
    data = data.select_columns([image_column, caption_column]).cast_column(image_column, datasets.Image(decode=False))
    return data.rename_columns(renames)


def _load_folder(folder: Path, caption_column: str, split: str, cache_dir: str | Path | None) -> datasets.Dataset:
    """A local imagefolder, its metadata checked first: datasets' own errors for it are obscure."""
    if split != "train":
        raise TrainingDataError(f"{folder} is a local folder, read whole as split 'train'; got split={split!r}.")
    metadata = _metadata_file(folder)
    rows = _metadata_rows(metadata)
    _check_rows(metadata, rows, caption_column)
    # Every file goes into one split: datasets would otherwise split by file name (test_*.png).
    data = _load_dataset(
        str(folder), "imagefolder", data_dir=str(folder), data_files={"train": "**"}, split=split, cache_dir=cache_dir
    )
    if len(data) != len(rows):
        raise TrainingDataError(
            f"datasets read {len(data)} rows from {folder}, but {metadata} has {len(rows)}: metadata files in "
            f"subfolders are not supported here. Merge them into {metadata}."
        )
    if metadata.suffix == ".csv" and caption_column in data.column_names:
        # datasets reads CSV with pandas, which turns empty cells and words such as "NA" or "None" into
        # missing values; the captions are the file's own text (the rows keep the file's order).
        captions = [row[caption_column] for _, row in rows]
        data = data.remove_columns(caption_column).add_column(caption_column, captions)
    return data


def _metadata_file(folder: Path) -> Path:
    present = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if not present:
        raise TrainingDataError(
            f"{folder} has no metadata.jsonl. Add one with a line per image, such as {EXAMPLE_LINE} "
            "(file_name is the image's path inside the folder; metadata.csv with the same columns also works)."
        )
    if len(present) > 1:
        raise TrainingDataError(f"{folder} has both metadata.jsonl and metadata.csv: keep one of them.")
    return present[0]


def _metadata_rows(metadata: Path) -> list[tuple[int, dict]]:
    """(line number, row) for every row of a metadata.jsonl or metadata.csv file, in file order."""
    try:
        # A CSV file written by a spreadsheet may start with a byte-order mark; JSON lines may not.
        text = metadata.read_text(encoding="utf-8-sig" if metadata.suffix == ".csv" else "utf-8")
    except UnicodeDecodeError as error:
        raise TrainingDataError(f"{metadata} is not UTF-8 text ({error}): save it as UTF-8.") from error
    if metadata.suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if "file_name" not in (reader.fieldnames or []):
            raise TrainingDataError(f"{metadata} has no file_name column (its header: {reader.fieldnames}).")
        return [(reader.line_num, row) for row in reader]
    rows = []
    # Lines end at "\n" only, as datasets reads them; splitlines() would also split at U+2028 in a caption.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TrainingDataError(
                f"{metadata} line {number} is not valid JSON ({error.msg}): each line must be one object, "
                f"such as {EXAMPLE_LINE}"
            ) from error
        if not isinstance(row, dict):
            raise TrainingDataError(f"{metadata} line {number} is not a JSON object, such as {EXAMPLE_LINE}")
        rows.append((number, row))
    return rows


def _check_rows(metadata: Path, rows: list[tuple[int, dict]], caption_column: str) -> None:
    """Refuse an empty file, rows without a file name or a text caption, and images that do not exist."""
    if not rows:
        raise TrainingDataError(f"{metadata} has no rows: add a line per image, such as {EXAMPLE_LINE}")
    # A caption column that no row has is reported with the dataset's columns, after loading.
    has_captions = any(caption_column in row for _, row in rows)
    missing = []
    for number, row in rows:
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            raise TrainingDataError(f"{metadata} line {number} has no file_name (the image's path inside the folder).")
        if has_captions and not isinstance(row.get(caption_column), str):
            raise TrainingDataError(
                f"{metadata} line {number}: the {caption_column!r} caption of {name} is {row.get(caption_column)!r}, "
                'not text. Give every image a caption ("" is allowed).'
            )
        if not (metadata.parent / name).is_file():
            missing.append(name)
    if missing:
        shown = ", ".join(missing[:SHOWN_MISSING]) + (", ..." if len(missing) > SHOWN_MISSING else "")
        raise TrainingDataError(
            f"{metadata} names {len(missing)} image file(s) that do not exist in {metadata.parent}: {shown}. "
            "Add the images or remove their lines."
        )


def _load_dataset(source: str, path: str, **options) -> datasets.Dataset:
    """datasets.load_dataset(path, **options), its errors about the source as TrainingDataErrors."""
    try:
        return datasets.load_dataset(path, **options)
    except ConnectionError as error:
        raise TrainingDataError(
            f"Could not fetch the hub dataset {source!r}, and no local folder of that name exists: {error}. "
            "This machine may be offline (or HF_HUB_OFFLINE=1 is set): fetch the dataset where the hub can be "
            "reached, or give a local image folder."
        ) from error
    except datasets.exceptions.DatasetNotFoundError as error:
        raise TrainingDataError(
            f"No dataset {source!r} on the hub and no local folder of that name: {error}. Check the id "
            "(org/name); a private or gated dataset needs `hf auth login`."
        ) from error
    except (FileNotFoundError, ValueError) as error:
        raise TrainingDataError(f"datasets could not read {source!r}: {error}") from error


def _check_columns(data: datasets.Dataset, source: str, image_column: str, caption_column: str) -> None:
    """The named columns exist and hold images and text."""
    columns = ", ".join(data.column_names)
    named = ((image_column, "image_column", "images"), (caption_column, "caption_column", "text"))
    for column, argument, kind in named:
        if column not in data.column_names:
            raise TrainingDataError(
                f"{source} has no column {column!r} (its columns: {columns}). Name its {kind} column with {argument}=."
            )
    if not isinstance(data.features[image_column], datasets.Image):
        raise TrainingDataError(
            f"Column {image_column!r} of {source} holds {data.features[image_column]}, not images "
            f"(its columns: {columns}). Name its image column with image_column=."
        )
    caption_feature = data.features[caption_column]
    if not isinstance(caption_feature, datasets.Value) or caption_feature.dtype not in ("string", "large_string"):
        raise TrainingDataError(
            f"Column {caption_column!r} of {source} holds {caption_feature}, not text "
            f"(its columns: {columns}). Name its caption column with caption_column=."
        )


def _check_captions(data: datasets.Dataset, source: str, caption_column: str) -> None:
    """Every row has a caption; an empty string counts as one, a missing value (None) does not."""
    captions = data.with_format("arrow")[caption_column]
    if captions.null_count:
        first = captions.is_null().index(True).as_py()
        raise TrainingDataError(
            f"Row {first} of {source} has no caption (None in column {caption_column!r}); "
            f'{captions.null_count} row(s) have none. Give every image a caption ("" is allowed).'
        )


class ImageCaptionDataset(torch.utils.data.Dataset):
    """The samples of a `load_image_captions` Dataset as training inputs, decoded when read.

    Item `index`: {"pixel_values": (3, R, R) float32 in [-1, 1], "caption": str, "index": index},
    R = `resolution`. The default collate stacks pixel_values to (B, 3, R, R), captions to a list
    and indices to a (B,) int64 tensor.
    """

    def __init__(self, data: datasets.Dataset, resolution: int):
        image = data.features.get("image")
        if set(data.column_names) != {"image", "caption"} or not isinstance(image, datasets.Image) or image.decode:
            raise ValueError(f"expected the Dataset of load_image_captions, got columns {data.features}")
        _check_positive("resolution", resolution)
        self.data = data
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict:
        row = self.data[index]
        image = _open_image(row["image"], index)
        return {"pixel_values": prepare_image(image, self.resolution), "caption": row["caption"], "index": index}


def _open_image(value: dict, index: int) -> PIL.Image.Image:
    """The image of a {"path", "bytes"} value, upright; a file that cannot be decoded is named."""
    path, raw = value.get("path"), value.get("bytes")
    where = f"sample {index} ({path})" if path else f"sample {index}"
    try:
        with PIL.Image.open(io.BytesIO(raw) if raw is not None else path) as image:
            # Phone photos store their orientation in EXIF; "left of" in a caption means the upright image.
            return ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as error:
        raise TrainingDataError(f"Cannot read the image of {where}: {error}. Replace the file or remove it.") from error


def prepare_image(image: PIL.Image.Image, resolution: int) -> torch.Tensor:
    """An image as (3, R, R) float32 in [-1, 1]: RGB, shorter side resized to R, centre crop.

    Bilinear resizing (antialiased, as PIL filters are when shrinking) is what diffusers'
    train_text_to_image and IP-Adapter's training tutorial use; ELLA's training was adapted from
    the latter, so the images look like the ones the released connector saw. When the margins
    differ by an odd number of pixels, the extra one is cut from the right or the bottom.
    """
    _check_positive("resolution", resolution)
    image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (resolution, max(resolution, int(resolution * height / width)))
    else:
        size = (max(resolution, int(resolution * width / height)), resolution)
    image = image.resize(size, PIL.Image.Resampling.BILINEAR)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    pixels = torch.from_numpy(np.array(image, dtype=np.float32))  # (R, R, 3) in [0, 255]
    return (pixels / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(name, f"must be a whole number of at least 1, got {value!r}.")


class StepBatches:
    """Which samples each process reads for each micro-batch, as a pure function of (seed, batch number).

    Epoch e is a permutation of all samples drawn from a torch.Generator seeded with seed + e. Its
    global batches are runs of batch_size * num_processes consecutive entries; process p takes
    entries [p * batch_size, (p + 1) * batch_size) of each. The incomplete last global batch of an
    epoch is dropped, so processes never read the same sample within an epoch and always step
    together. Resuming at any batch number gives exactly the batches an uninterrupted run reads.
    """

    def __init__(
        self, num_samples: int, batch_size: int, *, num_processes: int = 1, process_index: int = 0, seed: int = 0
    ):
        _check_positive("batch_size", batch_size)
        _check_positive("num_processes", num_processes)
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index must be in [0, {num_processes}), got {process_index}")
        global_batch = batch_size * num_processes
        if num_samples < global_batch:
            raise TrainingDataError(
                f"The training data has {num_samples} sample(s), fewer than one global batch needs: "
                f"{batch_size} per process x {num_processes} process(es) = {global_batch}. "
                "Lower --batch-size, or add data, or train on fewer processes."
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.process_index = process_index
        self.seed = seed
        self.batches_per_epoch = num_samples // global_batch

    def _order(self, epoch: int) -> torch.Tensor:
        """Epoch `epoch`'s permutation of the sample indices, (num_samples,) int64."""
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))

    def _take(self, order: torch.Tensor, position: int) -> list[int]:
        """This process's share of global batch `position` of an epoch's `order`."""
        start = (position * self.num_processes + self.process_index) * self.batch_size
        return order[start : start + self.batch_size].tolist()

    def indices(self, batch_number: int) -> list[int]:
        """This process's sample indices for micro-batch `batch_number` (counted from 0 across epochs)."""
        if batch_number < 0:
            raise ValueError(f"batch_number must be 0 or more, got {batch_number}")
        epoch, position = divmod(batch_number, self.batches_per_epoch)
        return self._take(self._order(epoch), position)

    def iterate(self, start: int = 0) -> Iterator[list[int]]:
        """`indices(start)`, `indices(start + 1)`, ... without end, each epoch's permutation drawn once."""
        if start < 0:
            raise ValueError(f"start must be 0 or more, got {start}")
        epoch, position = divmod(start, self.batches_per_epoch)
        while True:
            order = self._order(epoch)
            for within in range(position, self.batches_per_epoch):
                yield self._take(order, within)
            epoch, position = epoch + 1, 0


class _BatchStream(Sampler[list[int]]):
    """StepBatches from batch `start` on, as a DataLoader batch_sampler (each iteration starts anew)."""

    def __init__(self, batches: StepBatches, start: int):
        self.batches = batches
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        return self.batches.iterate(self.start)


def batch_loader(
    dataset: torch.utils.data.Dataset, batches: StepBatches, start: int = 0, num_workers: int = 0
) -> DataLoader:
    """A DataLoader over `dataset` reading `batches` from micro-batch `start` on, without end.

    Batches are collated by torch's default collate: for an ImageCaptionDataset, pixel_values
    (B, 3, R, R), caption a list of B strings, index (B,) int64.
    """
    return DataLoader(dataset, batch_sampler=_BatchStream(batches, start), num_workers=num_workers)
