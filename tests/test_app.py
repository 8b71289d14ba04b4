"""The Gradio app through its public API (gradio_client), on the tiny preset."""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import pytest
import torch
from gradio_client import Client
from PIL import Image
from tests_support import free_port

from ella_demo import generate
from ella_demo.app import ServingLimits, build_app, compare_tab, handlers, launch_app, serving
from ella_demo.app.compare_tab import GENERATE_OUTPUTS, example_prompts
from ella_demo.inspect.views import RunViews

REPO_ROOT = Path(__file__).resolve().parents[1]
FAST = {"steps": 2, "width": 64, "height": 64}
SMALL_SIZE = {"width": 64, "height": 64}


@pytest.fixture
def client(server):
    return Client(server, verbose=False)


def generated(result: tuple) -> dict:
    """The generate endpoint's outputs by name (its API leaves out the session state)."""
    return dict(zip([name for name in GENERATE_OUTPUTS if name != "session"], result, strict=True))


def test_generate_returns_both_images_and_the_trace_views(client):
    result = generated(client.predict(prompt="a red cat on a blue chair", seed=7, api_name="/generate", **FAST))
    # 64 px pictures are shown 4 times larger, pixel for pixel; the gallery holds them as made.
    assert Image.open(result["clip_image"]).size == (256, 256) and Image.open(result["ella_image"]).size == (256, 256)
    assert [entry["caption"] for entry in result["gallery"]] == ["CLIP 1", "ELLA 1"]
    assert Image.open(result["gallery"][0]["image"]).size == (64, 64)
    assert "Seed used: 7" in result["notes"] and "Random weights" in result["notes"]
    assert result["step"]["maximum"] == 2
    assert [entry["token"] for entry in result["highlighted"]] == ["a", "red", "cat", "on", "a", "blue", "chair"]
    word = result["word"]
    assert word["value"] in [choice[0] for choice in word["choices"]]
    for name in ("clip_preview", "ella_preview", "query_map", "word_maps", "token_time", "curves"):
        assert Image.open(result[name]).width > 0


def test_a_one_step_run_is_shown_with_its_single_step(client):
    result = generated(client.predict(prompt="a red cat", api_name="/generate", **{**FAST, "steps": 1}))
    assert result["step"]["value"] == 1 and result["step"]["interactive"] is False
    assert Image.open(result["query_map"]).width > 0


def test_probe_endpoint_draws_one_or_two_prompts(client):
    single = client.predict(prompt="a red cat", timesteps=5, api_name="/probe")
    assert single[0] and single[1] and single[2] is None
    double = client.predict(prompt="a red cat", prompt2="three white birds", timesteps=5, api_name="/probe")
    assert Image.open(double[2]).width <= 1280


def test_bad_input_returns_the_specific_error(client):
    with pytest.raises(Exception, match="Width must be a multiple of 8 from 8 to 1024, got 100"):
        client.predict(prompt="a cat", steps=2, width=100, height=64, api_name="/generate")


def test_empty_prompt_is_allowed(client):
    result = generated(client.predict(prompt="", api_name="/generate", **FAST))
    assert result["clip_image"] and result["ella_image"]


def test_very_long_prompt_is_truncated_with_a_visible_warning(client):
    prompt = ("a red cat sitting on a blue chair next to a green lamp " * 60)[:3000]
    notes = generated(client.predict(prompt=prompt, t5_length="128", api_name="/generate", **FAST))["notes"]
    assert "CLIP: The prompt is" in notes and "T5: The prompt is" in notes
    assert "tokens were dropped" in notes


def test_concurrent_clients_get_their_own_results(server):
    prompts = {"a red cat on a blue chair": 1, "three white birds above a dark forest": 2}

    def run(prompt: str):
        client = Client(server, verbose=False)
        return generated(client.predict(prompt=prompt, seed=prompts[prompt], api_name="/generate", **FAST))

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(prompts, pool.map(run, prompts), strict=True))
    for prompt, result in results.items():
        assert " ".join(entry["token"] for entry in result["highlighted"]) == prompt
        assert f"Seed used: {prompts[prompt]}" in result["notes"]


def test_one_failing_request_does_not_break_the_next(client, monkeypatch):
    calls = []
    real_generate = handlers.generate

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(handlers, "generate", out_of_memory_once)
    with pytest.raises(Exception, match="ran out of memory for this request"):
        client.predict(prompt="a cat", api_name="/generate", **FAST)
    result = generated(client.predict(prompt="a cat", api_name="/generate", **FAST))
    assert result["clip_image"] and result["ella_image"]


def test_serving_defaults_are_local_and_private():
    sys.path.insert(0, str(REPO_ROOT))
    import app

    args = app.parse_args([])
    assert (args.host, args.share, args.concurrency, args.preset) == ("127.0.0.1", False, 1, "sd15")


def size_sliders(app: gr.Blocks) -> dict[str, gr.Slider]:
    """The Compare tab's Width and Height sliders, by label."""
    return {
        block.label: block
        for block in app.blocks.values()
        if isinstance(block, gr.Slider) and block.label in ("Width", "Height")
    }


def test_size_sliders_start_at_the_models_native_size(tiny):
    sliders = size_sliders(build_app(tiny))
    assert sorted(sliders) == ["Height", "Width"]
    for slider in sliders.values():
        assert (slider.minimum, slider.maximum, slider.value, slider.step) == (8, 1024, tiny.native_size, 8)
    assert tiny.native_size == 64


@pytest.mark.parametrize(
    ("preset", "native", "expected"),
    [("pocket", 64, (32, 256, 64)), ("sd15", 512, (256, 1024, 512)), ("random-sd15", 512, (256, 1024, 512))],
)
def test_size_sliders_follow_the_preset(preset, native, expected):
    with gr.Blocks():
        controls = compare_tab._image_settings(SimpleNamespace(preset=preset, native_size=native))
    for name in ("width", "height"):
        assert (controls[name].minimum, controls[name].maximum, controls[name].value) == expected


def test_generate_without_a_size_makes_the_native_size(client, tiny):
    result = generated(client.predict(prompt="a red cat", steps=1, api_name="/generate"))
    assert Image.open(result["clip_image"]).size == Image.open(result["ella_image"]).size == (256, 256)  # shown x4
    direct = handlers.ExplorerUI(tiny).run_generate("a red cat", steps=1)
    assert direct["session"].result.clip_images[0].size == direct["session"].result.ella_images[0].size == (64, 64)
    assert direct["session"].result.settings.height == direct["session"].result.settings.width == 64
    sized = handlers.ExplorerUI(tiny).run_generate("a red cat", steps=1, width=32)
    assert sized["session"].result.ella_images[0].size == (32, 64) and sized["ella_image"].size == (128, 256)


def test_guidance_starts_at_the_presets_default_in_the_slider_and_the_api(tiny):
    with gr.Blocks():
        sliders = {name: compare_tab._prompt_and_seed(name)["guidance_scale"].value for name in ("sd15", "pocket")}
    assert sliders == {"sd15": 10.0, "pocket": 5.0}
    assert handlers.ExplorerUI(tiny).run_generate("a red cat", steps=1)["session"].result.settings.guidance_scale == 10
    pocket_like = handlers.ExplorerUI(replace(tiny, preset="pocket"))
    assert pocket_like.run_generate("a red cat", steps=1)["session"].result.settings.guidance_scale == 5
    assert pocket_like.run_generate("a cat", steps=1, guidance_scale=0)["session"].result.settings.guidance_scale == 0


def test_views_need_a_run_first(tiny):
    explorer = handlers.ExplorerUI(tiny)
    with pytest.raises(Exception, match="Generate an image pair first"):
        explorer.on_step(None, 1, "mean", "mean", "cat", "all")


def test_example_prompts_are_many_and_dense():
    prompts = example_prompts()
    assert len(prompts) >= 12
    assert all(len(prompt.split()) >= 12 for prompt in prompts)
    assert not set(prompts) & set(example_prompts("pocket"))


def test_the_pocket_world_shows_its_own_examples_and_says_what_it_is():
    from types import SimpleNamespace

    from ella_demo.app.layout import _banner
    from ella_demo.pocket.captions import training_vocabulary, words_of
    from ella_demo.pocket.queries import plural_of
    from ella_demo.pocket.vocabulary import PARAPHRASES

    words = {word for options in PARAPHRASES.values() for option in options for word in (option, plural_of(option))}
    paraphrases = {part for word in words for part in word.split()}
    prompts = example_prompts("pocket")
    assert len(prompts) >= 6
    for prompt in prompts:
        unknown = set(words_of(prompt)) - training_vocabulary() - paraphrases
        assert not unknown, (prompt, unknown)
    assert sum(bool(set(words_of(prompt)) & paraphrases) for prompt in prompts) >= 2
    banner = _banner(SimpleNamespace(preset="pocket", random_weights=False))
    assert "not Stable Diffusion" in banner and "all-MiniLM-L6-v2" in banner
    assert "random weights" in _banner(SimpleNamespace(preset="tiny", random_weights=True))
    assert _banner(SimpleNamespace(preset="sd15", random_weights=False)) == ""


# --- serving: one queue for model work, stop, limits, bad values ------------------------------


@pytest.fixture
def launched(tiny, monkeypatch):
    """Start a fresh app with given limits; records each run's steps (or how it ended) in `steps`."""
    steps: list = []
    real_generate = handlers.generate

    def recording_generate(*args, progress, **kwargs):
        def after_step(done, total):
            steps.append(done)
            progress(done, total)

        try:
            return real_generate(*args, progress=after_step, **kwargs)
        except Exception as error:
            steps.append(type(error).__name__)
            raise

    monkeypatch.setattr(handlers, "generate", recording_generate)
    apps = []

    def launch(limits: ServingLimits = ServingLimits()):  # noqa: B008 - frozen dataclass
        app = build_app(tiny, limits=limits)
        port = free_port()
        launch_app(app, port=port, prevent_thread_lock=True, quiet=True, limits=limits)
        apps.append(app)
        return f"http://127.0.0.1:{port}/", app, steps

    yield launch
    for app in apps:
        app.close()


def wait_for(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_every_model_handler_shares_one_concurrency_group_and_views_do_not(tiny):
    app = build_app(tiny, limits=ServingLimits(concurrency=2))
    groups = {}
    for block_fn in app.fns.values():
        name = getattr(block_fn.fn, "__name__", "")
        groups.setdefault(name, set()).add((block_fn.concurrency_id, block_fn.concurrency_limit))
    assert groups["run_generate"] == {(serving.MODEL_WORK, 2)}  # the button and Enter in the prompt
    assert groups["run_probe"] == {(serving.MODEL_WORK, 2)}
    for view in ("on_step", "on_word", "on_time_controls", "on_select", "animation", "download"):
        assert all(
            group != serving.MODEL_WORK and limit == serving.VIEW_CONCURRENCY for group, limit in groups[view]
        ), view
    assert app._queue.max_size == ServingLimits().max_queue


def test_overlapping_generate_and_probe_run_one_at_a_time(launched, monkeypatch):
    spans = {}
    real_probe = handlers.probe

    def slow_probe(*args, **kwargs):
        started = time.monotonic()
        result = real_probe(*args, **kwargs)
        time.sleep(0.5)
        spans.setdefault("probe", []).append((started, time.monotonic()))
        return result

    monkeypatch.setattr(handlers, "probe", slow_probe)
    url, _, steps = launched(ServingLimits(concurrency=1))
    generating = Client(url, verbose=False).submit(prompt="a red cat", steps=40, api_name="/generate", **SMALL_SIZE)
    wait_for(lambda: len(steps) >= 1)
    generate_started = time.monotonic()
    Client(url, verbose=False).predict(prompt="a red cat", timesteps=5, api_name="/probe")
    generating.result(timeout=120)
    assert steps[-1] == 40  # the generation ran to its end...
    ((probe_started, _),) = spans["probe"]
    assert probe_started > generate_started  # ...and the probe waited for it, though it was asked for mid-run
    assert len([step for step in steps if isinstance(step, int)]) == 40


def test_stop_button_ends_the_run_between_steps(launched):
    url, _, steps = launched()
    client = Client(url, verbose=False)
    job = client.submit(prompt="a red cat", steps=150, api_name="/generate", **SMALL_SIZE)
    wait_for(lambda: len(steps) >= 2)
    client.predict(api_name="/stop")
    notes = generated(job.result(timeout=120))["notes"]
    assert steps[-1] == "GenerationCancelledError"
    assert max(step for step in steps if isinstance(step, int)) < 150
    assert notes.startswith("⏹️ Stopped after step")


def test_a_client_that_goes_away_stops_its_run(launched, monkeypatch):
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.5")
    url, _, steps = launched()
    client = Client(url, verbose=False)
    client.submit(prompt="a red cat", steps=150, api_name="/generate", **SMALL_SIZE)
    wait_for(lambda: len(steps) >= 2)
    client.close()
    wait_for(lambda: steps[-1] == "GenerationCancelledError", seconds=90)
    assert max(step for step in steps if isinstance(step, int)) < 150


def test_traced_work_over_the_cap_is_refused_with_the_cap_named(client):
    with pytest.raises(Exception, match=r"= 629\.1 M pixel-steps; this app allows 52\.4 M per request"):
        client.predict(prompt="a cat", steps=150, width=1024, height=1024, num_images=4, api_name="/generate")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"steps": 2.5}, "Steps must be a whole number, got 2.5"),
        ({"steps": 151}, "Steps must be a whole number from 1 to 150, got 151"),
        ({"num_images": 1.5}, "Images per side must be a whole number, got 1.5"),
        ({"width": "wide"}, "Width must be a whole number, got 'wide'"),
        ({"seed": 2.7}, "Seed must be a whole number, got 2.7"),
        ({"guidance_scale": [7]}, r"Guidance scale must be a number, got \[7\]"),
        ({"prompt": 42}, "Prompt must be text, got int"),
        ({"scheduler": "lms"}, "Scheduler must be one of dpm"),
        ({"seeding": "gpu"}, "Seeding must be one of cpu, official, got 'gpu'"),
        ({"t5_length": "long"}, "T5 length must be a whole number, got 'long'"),
    ],
)
def test_every_bad_api_value_gets_a_message_naming_its_field(client, arguments, message):
    with pytest.raises(Exception, match=message):
        client.predict(**{"prompt": "a cat", **FAST, **arguments}, api_name="/generate")


GENERATE_DEFAULTS = ["a cat", "", 0, 2, 7.5, 64, 64, "dpm++", 1, "ella", "flexible", "cpu", None]


def raw_call(server: str, api_name: str, data: list) -> tuple[str, dict]:
    """Call an endpoint as a hand-written client would: raw JSON (NaN and lone surrogates allowed)."""
    url = f"{server}gradio_api/call/{api_name}"
    body = json.dumps({"data": data})  # json allows NaN/Infinity and escapes lone surrogates as \\udXXX
    event_id = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30).json()
    with httpx.stream("GET", f"{url}/{event_id['event_id']}", timeout=120) as stream:
        lines = stream.read().decode().splitlines()
    event = next(line.removeprefix("event: ") for line in lines if line.startswith("event: "))
    payload = next(line.removeprefix("data: ") for line in lines if line.startswith("data: "))
    return event, json.loads(payload)


@pytest.mark.parametrize(
    ("position", "value", "message"),
    [
        (0, "a red \ud800 cat", "Prompt contains a character that is not valid text (position 6); remove it."),
        (2, float("nan"), "Seed must be a whole number, got nan."),
        (3, float("inf"), "Steps must be a whole number, got inf."),
        (4, float("nan"), "Guidance scale must be a number from 0 to 30, got nan."),
    ],
)
def test_values_json_clients_cannot_send_still_get_a_named_message(server, position, value, message):
    """gradio_client refuses to encode NaN or a lone surrogate; a hand-written client can send both."""
    data = list(GENERATE_DEFAULTS)
    data[position] = value
    event, payload = raw_call(server, "generate", data)
    assert (event, payload["error"]) == ("error", message)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1.0], 'LoRA weights: must map LoRA names to weights, like {"style": 0.8}, got [1.0].'),
        ({"style": 1.0}, "LoRA weights: names 'style', which was not loaded at start-up. LoRAs with a per-run weight: "
                         "none (start the app with --lora FILE[:WEIGHT])."),
    ],
)  # fmt: skip
def test_lora_weights_for_loras_the_server_lacks_are_refused_by_name(server, value, message):
    event, payload = raw_call(server, "generate", [*GENERATE_DEFAULTS[:-1], value])
    assert (event, payload["error"]) == ("error", message)


def test_bad_probe_values_name_their_field(client):
    with pytest.raises(Exception, match=r"Timesteps must be a whole number, got 4\.5"):
        client.predict(prompt="a red cat", timesteps=4.5, api_name="/probe")
    with pytest.raises(Exception, match="Normalisation must be one of paper"):
        client.predict(prompt="a red cat", timesteps=4, normalisation="loud", api_name="/probe")


def test_internal_errors_are_logged_and_shown_as_such(client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("secret internal detail")

    monkeypatch.setattr(handlers, "generate", broken)
    with pytest.raises(Exception, match="Internal error: this is a bug in ELLA Explorer") as raised:
        client.predict(prompt="a cat", api_name="/generate", **FAST)
    assert "secret internal detail" not in str(raised.value)
    logged = [record for record in caplog.records if record.name == "ella_demo.app.checks"]
    assert logged and "secret internal detail" in logged[-1].exc_text


def test_official_seeding_is_said_in_the_notes(client):
    notes = generated(client.predict(prompt="a cat", seeding="official", seed=5, api_name="/generate", **FAST))["notes"]
    assert "Seed used: 5** (official: one cpu generator per image, seed 5)" in notes


def test_uploads_over_the_size_limit_are_refused(server):
    files = {"files": ("big.bin", b"0" * (6 * 2**20), "application/octet-stream")}
    response = httpx.post(f"{server}gradio_api/upload", files=files, timeout=60)
    assert response.status_code == 413


def test_pixel_clicks_outside_the_image_are_named(tiny):
    explorer = handlers.ExplorerUI(tiny)
    views = RunViews(generate(tiny, "a red cat", trace=True, num_inference_steps=2, height=32, width=32))
    # A 32 px picture is shown 8 times larger (256 px): clicks arrive in the shown picture's pixels.
    assert handlers.for_display(views.result.clip_images[0]).size == (256, 256)
    for position in ([256, 5], [-1, 0], [float("nan"), 3], ["x", 1], [1]):
        event = SimpleNamespace(index=position)
        with pytest.raises(gr.Error, match=r"Pixel must be an \(x, y\) position inside the 256x256 image"):
            explorer.on_select(views, 2, "all", event)
    assert "At pixel (3, 4)" in explorer.on_select(views, 2, "all", SimpleNamespace(index=[24, 35]))


def test_view_controls_are_checked(tiny):
    explorer = handlers.ExplorerUI(tiny)
    views = RunViews(generate(tiny, "a red cat", trace=True, num_inference_steps=2, height=32, width=32))
    with pytest.raises(gr.Error, match="Step must be from 1 to 2 for this run, got 0"):
        explorer.on_step(views, 0, "mean", "mean", None, "all")
    with pytest.raises(gr.Error, match=r"Step must be a whole number, got 1\.5"):
        explorer.on_step(views, 1.5, "mean", "mean", None, "all")
    with pytest.raises(gr.Error, match="Connector block must be one of mean, 0, 1, got '9'"):
        explorer.on_step(views, 1, "9", "mean", None, "all")
    with pytest.raises(gr.Error, match="Step window must be one of this step, all, early, middle, late"):
        explorer.on_word(views, 1, "cat", "sometimes", "shared")


def test_export_folders_stay_bounded(tiny):
    explorer = handlers.ExplorerUI(tiny)
    views = RunViews(generate(tiny, "a red cat", trace=True, num_inference_steps=2, height=32, width=32))
    paths = [explorer.animation(views, "mean", "mean") for _ in range(serving.EXPORTS_KEPT + 4)]
    assert explorer.exports.count() == serving.EXPORTS_KEPT
    assert Path(paths[-1]).is_file() and not Path(paths[0]).exists()
    explorer.exports.close()
    assert explorer.exports.count() == 0


def test_serving_caps_malloc_arenas_where_glibc_is():
    assert serving.limit_malloc_arenas() is sys.platform.startswith("linux")  # a no-op elsewhere
