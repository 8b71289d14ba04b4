"""Training data: image folders and their errors, image preparation, and the per-process batch order."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import pytest
import torch
from PIL import Image

from ella_demo.train.data import (
    ImageCaptionDataset,
    StepBatches,
    TrainingDataError,
    batch_loader,
    load_image_captions,
    prepare_image,
)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)
# Sizes of the test images, square and not, so that resizing and cropping both have work to do.
SIZES = ((12, 12), (20, 8), (7, 16), (9, 9), (16, 10), (10, 10))
COLOURS = (RED, BLUE, GREEN, (255, 255, 0), (0, 255, 255), (128, 128, 128))


def write_folder(folder: Path, rows: list[dict], metadata: str = "metadata.jsonl") -> Path:
    """An imagefolder: a plain image for every row's file_name (colours and sizes vary), and the metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, row in enumerate(rows):
        path = folder / row["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SIZES[number % len(SIZES)], COLOURS[number % len(COLOURS)]).save(path)
    write_metadata(folder, rows, metadata)
    return folder


def write_metadata(folder: Path, rows: list[dict], metadata: str = "metadata.jsonl") -> None:
    if metadata == "metadata.jsonl":
        (folder / metadata).write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        columns = list(rows[0])
        lines = [",".join(columns)] + [",".join(row[column] for column in columns) for row in rows]
        (folder / metadata).write_text("\n".join(lines) + "\n", encoding="utf-8")


def captioned(*pairs: tuple[str, str]) -> list[dict]:
    return [{"file_name": name, "text": caption} for name, caption in pairs]


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "datasets-cache"


@pytest.fixture
def folder(tmp_path) -> Path:
    """Six images (names deliberately not in sorted order, one in a subfolder) with their captions."""
    rows = captioned(
        ("c.png", "a red cube left of a blue ball"),
        ("a.png", "a blue ball"),
        ("sub/b.png", ""),
        ("e.png", "a yellow square"),
        ("d.png", "two cyan circles"),
        ("f.png", "grey"),
    )
    return write_folder(tmp_path / "images", rows)


# ---------------------------------------------------------------------------------------------
# Loading


def test_a_folder_loads_as_image_and_caption_in_metadata_order(folder, cache):
    data = load_image_captions(folder, cache_dir=cache)
    assert set(data.column_names) == {"image", "caption"}
    assert data.features["image"] == datasets.Image(decode=False)
    assert list(data["caption"]) == [
        "a red cube left of a blue ball",
        "a blue ball",
        "",
        "a yellow square",
        "two cyan circles",
        "grey",
    ]
    assert [Path(row["image"]["path"]).relative_to(folder).as_posix() for row in data] == [
        "c.png",
        "a.png",
        "sub/b.png",
        "e.png",
        "d.png",
        "f.png",
    ]
    assert cache.is_dir()


def test_file_names_that_look_like_split_names_stay_in_the_one_split(tmp_path, cache):
    folder = write_folder(tmp_path / "images", captioned(("train_0.png", "one"), ("test_1.png", "two")))
    assert list(load_image_captions(folder, cache_dir=cache)["caption"]) == ["one", "two"]


def test_csv_metadata_keeps_the_captions_as_written(tmp_path, cache):
    # pandas, behind datasets' CSV reading, would make the empty cell and "NA" missing values.
    rows = [{"file_name": name, "label": caption} for name, caption in (("b.png", "NA"), ("a.png", ""), ("c.png", "7"))]
    folder = write_folder(tmp_path / "images", rows, metadata="metadata.csv")
    data = load_image_captions(folder, caption_column="label", cache_dir=cache)
    assert list(data["caption"]) == ["NA", "", "7"]
    assert [Path(row["image"]["path"]).name for row in data] == ["b.png", "a.png", "c.png"]


def test_json_lines_written_unescaped_keep_their_captions_whole(tmp_path, cache):
    folder = write_folder(tmp_path / "images", captioned(("a.png", "a"), ("b.png", "b")))
    lines = [json.dumps(row, ensure_ascii=False) for row in captioned(("a.png", "x\u2028y é"), ("b.png", "z"))]
    (folder / "metadata.jsonl").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    assert list(load_image_captions(folder, cache_dir=cache)["caption"]) == ["x\u2028y é", "z"]


def fake_hub(monkeypatch, images: list[dict], captions: list) -> None:
    """load_dataset answering every hub id with an in-memory dataset of images stored as bytes."""
    features = datasets.Features({"picture": datasets.Image(), "alt": datasets.Value("string")})
    hub = datasets.Dataset.from_dict({"picture": images, "alt": captions}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub)


def png_bytes(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hub_datasets_get_the_same_columns_and_unreadable_bytes_name_the_sample(monkeypatch):
    images = [{"bytes": png_bytes(RED), "path": None}, {"bytes": b"not an image", "path": None}]
    fake_hub(monkeypatch, images, ["red", "broken"])
    data = load_image_captions("org/name", image_column="picture", caption_column="alt")
    assert set(data.column_names) == {"image", "caption"} and list(data["caption"]) == ["red", "broken"]
    dataset = ImageCaptionDataset(data, 4)
    assert torch.equal(dataset[0]["pixel_values"][0], torch.ones(4, 4))
    with pytest.raises(TrainingDataError, match=r"image of sample 1:"):
        dataset[1]


def test_a_missing_caption_on_the_hub_names_its_row(monkeypatch):
    fake_hub(monkeypatch, [{"bytes": png_bytes(RED), "path": None}] * 3, ["fine", "", None])
    with pytest.raises(TrainingDataError, match=r"Row 2 of org/name has no caption \(None in column 'alt'\)"):
        load_image_captions("org/name", image_column="picture", caption_column="alt")


# ---------------------------------------------------------------------------------------------
# What is wrong with a source, said with the file or column at fault


def test_a_folder_without_metadata_says_how_to_write_one(tmp_path, cache):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "a.png")
    with pytest.raises(TrainingDataError, match=r"has no metadata\.jsonl") as error:
        load_image_captions(tmp_path / "images", cache_dir=cache)
    assert '{"file_name": "0001.png", "text": "a red cube left of a blue ball"}' in str(error.value)


def test_a_path_that_does_not_exist_says_so(tmp_path, cache):
    with pytest.raises(TrainingDataError, match=r"nowhere does not exist.*org/name"):
        load_image_captions(tmp_path / "nowhere", cache_dir=cache)


def test_a_hub_id_that_cannot_be_fetched_offline_says_the_machine_may_be_offline(cache):
    with pytest.raises(TrainingDataError, match=r"Could not fetch the hub dataset 'no-such-org/no-such-data'.*offline"):
        load_image_captions("no-such-org/no-such-data", cache_dir=cache)


def test_missing_images_are_all_counted_and_the_first_named(tmp_path, cache):
    folder = write_folder(tmp_path / "images", captioned(("a.png", "a")))
    rows = captioned(("a.png", "a"), *((f"gone{number}.png", "x") for number in range(7)))
    write_metadata(folder, rows)
    with pytest.raises(TrainingDataError, match=r"names 7 image file\(s\) that do not exist") as error:
        load_image_captions(folder, cache_dir=cache)
    assert "gone0.png, gone1.png, gone2.png, gone3.png, gone4.png, ..." in str(error.value)
    assert "gone5.png" not in str(error.value)


def test_a_line_that_is_not_json_is_named(tmp_path, cache):
    folder = write_folder(tmp_path / "images", captioned(("a.png", "a"), ("b.png", "b")))
    lines = (folder / "metadata.jsonl").read_text().splitlines()
    (folder / "metadata.jsonl").write_text(f"{lines[0]}\n{{'file_name': 'b.png'}}\n")
    with pytest.raises(TrainingDataError, match=r"metadata.jsonl line 2 is not valid JSON"):
        load_image_captions(folder, cache_dir=cache)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"caption_column": "caption"}, r"no column 'caption' \(its columns: image, text\).*caption_column="),
        ({"image_column": "picture"}, r"no column 'picture' \(its columns: image, text\).*image_column="),
        ({"image_column": "text", "caption_column": "image"}, r"Column 'text' .* not images"),
        ({"image_column": "text", "caption_column": "text"}, "must differ"),
        ({"split": "test"}, "read whole as split 'train'"),
    ],
)
def test_columns_and_splits_that_do_not_fit_are_named(folder, cache, options, message):
    with pytest.raises(TrainingDataError, match=message):
        load_image_captions(folder, cache_dir=cache, **options)


def test_a_caption_that_is_not_text_names_its_line_and_an_empty_one_is_fine(tmp_path, cache):
    folder = write_folder(tmp_path / "images", captioned(("a.png", ""), ("b.png", "b")))
    assert list(load_image_captions(folder, cache_dir=cache)["caption"]) == ["", "b"]
    write_metadata(folder, captioned(("a.png", ""), ("b.png", None)))
    with pytest.raises(TrainingDataError, match=r"line 2: the 'text' caption of b.png is None"):
        load_image_captions(folder, cache_dir=cache)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda folder: (folder / "metadata.jsonl").write_text("\n"), "metadata.jsonl has no rows"),
        (lambda folder: (folder / "metadata.csv").write_text("file_name,text\n"), "has both metadata.jsonl and"),
        (lambda folder: (folder / "metadata.jsonl").write_text('{"text": "x"}\n'), "line 1 has no file_name"),
        (lambda folder: (folder / "metadata.jsonl").write_bytes(b"\xff\xfe{}"), "is not UTF-8 text"),
    ],
)
def test_metadata_files_that_cannot_be_used_are_named(folder, cache, setup, message):
    setup(folder)
    with pytest.raises(TrainingDataError, match=message):
        load_image_captions(folder, cache_dir=cache)


def test_a_file_is_not_a_folder(folder, cache):
    with pytest.raises(TrainingDataError, match="is a file"):
        load_image_captions(folder / "a.png", cache_dir=cache)


def test_an_unreadable_image_is_named_when_it_is_decoded(folder, cache):
    (folder / "a.png").write_text("this is text, not a PNG")
    dataset = ImageCaptionDataset(load_image_captions(folder, cache_dir=cache), 8)
    assert dataset[0]["caption"] == "a red cube left of a blue ball"
    with pytest.raises(TrainingDataError, match=r"image of sample 1 \(.*a\.png\)"):
        dataset[1]


# ---------------------------------------------------------------------------------------------
# Images


def bands(size: tuple[int, int], margin: int, vertical: bool) -> Image.Image:
    """Blue margins of `margin` px left and right (top and bottom if `vertical`) of a red centre."""
    image = Image.new("RGB", size, BLUE)
    width, height = size
    box = (0, margin, width, height - margin) if vertical else (margin, 0, width - margin, height)
    image.paste(RED, box)
    return image


@pytest.mark.parametrize("vertical", [False, True], ids=["wide", "tall"])
def test_prepare_image_keeps_the_centre_of_a_non_square_image(vertical):
    size = (20, 100) if vertical else (100, 20)
    pixels = prepare_image(bands(size, 30, vertical), 8)
    assert pixels.shape == (3, 8, 8) and pixels.dtype == torch.float32
    # The crop is the middle 20 px of 100, well inside the red centre: exactly red, no blue.
    assert torch.equal(pixels, torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1).expand(3, 8, 8))
    # The blue margins were there to cut: the same image squeezed whole into 8 x 8 has them.
    squeezed = prepare_image(bands(size, 30, vertical).resize((8, 8)), 8)
    assert squeezed[2].max() > 0


def test_prepare_image_gives_rgb_in_minus_one_to_one():
    grey = prepare_image(Image.new("L", (13, 9), 0), 5)
    assert grey.shape == (3, 5, 5) and torch.equal(grey, -torch.ones(3, 5, 5))
    white = prepare_image(Image.new("RGBA", (3, 4), (255, 255, 255, 0)), 6)
    assert white.shape == (3, 6, 6) and torch.equal(white, torch.ones(3, 6, 6))
    noise = prepare_image(Image.effect_noise((30, 17), 60), 16)
    assert -1.0 <= noise.min() < noise.max() <= 1.0


def test_the_exif_orientation_makes_the_image_upright(tmp_path, cache):
    folder = tmp_path / "images"
    folder.mkdir()
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))  # red on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image.save(folder / "photo.jpg", exif=exif, quality=100)
    write_metadata(folder, captioned(("photo.jpg", "red above blue")))
    pixels = ImageCaptionDataset(load_image_captions(folder, cache_dir=cache), 8)[0]["pixel_values"]
    # Upright, the image is tall with red on top; the 8 x 8 crop is its middle, half red half blue.
    assert pixels[0, :3].mean() > 0.9 and pixels[2, -3:].mean() > 0.9


# ---------------------------------------------------------------------------------------------
# Which samples each process reads


def test_two_processes_split_every_global_batch_and_never_share_a_sample_within_an_epoch():
    processes = [StepBatches(23, 3, num_processes=2, process_index=p, seed=5) for p in range(2)]
    assert processes[0].batches_per_epoch == 3  # 23 // 6: the last 5 samples of each epoch are dropped
    for epoch in range(3):
        seen = []
        for number in range(epoch * 3, epoch * 3 + 3):
            first, second = (batches.indices(number) for batches in processes)
            assert len(first) == len(second) == 3 and not set(first) & set(second)
            order = torch.randperm(23, generator=torch.Generator().manual_seed(5 + epoch)).tolist()
            assert first + second == order[(number - epoch * 3) * 6 :][:6]
            seen += first + second
        assert len(seen) == len(set(seen)) == 18


def test_indices_and_iterate_agree_from_any_start():
    batches = StepBatches(10, 3, seed=1)
    assert batches.batches_per_epoch == 3
    for start in (0, 1, 2, 3, 5, 7):
        stream = batches.iterate(start)
        assert [next(stream) for _ in range(8)] == [batches.indices(number) for number in range(start, start + 8)]


def test_epochs_differ_and_the_seed_decides_the_order():
    batches = StepBatches(40, 4)
    epoch_orders = [[i for n in range(10) for i in batches.indices(epoch * 10 + n)] for epoch in range(3)]
    assert all(sorted(order) == list(range(40)) for order in epoch_orders)
    assert len({tuple(order) for order in epoch_orders}) == 3
    assert StepBatches(40, 4).indices(13) == batches.indices(13)
    assert StepBatches(40, 4, seed=1).indices(0) != batches.indices(0)


def test_too_few_samples_for_one_global_batch_says_what_to_change():
    with pytest.raises(
        TrainingDataError, match=r"has 5 sample\(s\).*4 per process x 2 process\(es\) = 8.*--batch-size"
    ):
        StepBatches(5, 4, num_processes=2)


def test_batch_loader_collates_the_batches_it_is_given(folder, cache):
    dataset = ImageCaptionDataset(load_image_captions(folder, cache_dir=cache), 8)
    batches = StepBatches(len(dataset), 2, seed=3)
    for num_workers in (0, 2):
        loader = iter(batch_loader(dataset, batches, start=2, num_workers=num_workers))
        for number in range(2, 6):  # across the end of the 3-batch epoch
            batch = next(loader)
            expected = batches.indices(number)
            assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
            assert batch["index"].tolist() == expected
            assert batch["caption"] == [dataset.data[index]["caption"] for index in expected]
            assert torch.equal(batch["pixel_values"][1], dataset[expected[1]]["pixel_values"])
