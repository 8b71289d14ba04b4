"""The side-by-side engine against diffusers' own pipeline and the official ELLA approach."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from ella_demo import generate
from ella_demo.core.schedulers import SCHEDULERS, make_scheduler
from ella_demo.core.settings import SettingsError

PROMPT = "a red cat sitting on a blue chair"
SMALL = {"num_inference_steps": 3, "height": 32, "width": 32}


def diffusers_pipeline(models, scheduler: str, unet=None) -> StableDiffusionPipeline:
    """A new pipeline over the shared modules with its own scheduler (the shared one is untouched)."""
    pipe = models.pipe
    return StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=unet or pipe.unet,
        scheduler=make_scheduler(scheduler, pipe.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


class EllaProxyUNet(torch.nn.Module):
    """The official ELLA integration: the UNet's text condition goes through the connector at each
    call's timestep. Written here as the reference the engine must agree with."""

    def __init__(self, unet, ella):
        super().__init__()
        self.unet, self.ella = unet, ella
        self.config = unet.config

    @property
    def dtype(self):
        return self.unet.dtype

    @property
    def device(self):
        return self.unet.device

    def forward(self, sample, timestep, encoder_hidden_states, **kwargs):
        tokens = self.ella(encoder_hidden_states, timestep)
        return self.unet(sample, timestep, encoder_hidden_states=tokens, **kwargs)


@pytest.mark.parametrize("scheduler", ["dpm++", "ddim", "euler_a", "unipc"])
def test_clip_side_equals_diffusers_pipeline(tiny, scheduler):
    settings = {"guidance_scale": 7.5, "num_images": 2, **SMALL}
    ours = generate(tiny, PROMPT, negative_prompt="blurry", seed=3, scheduler=scheduler, sides="clip", **settings)
    reference = diffusers_pipeline(tiny, scheduler)(
        PROMPT,
        negative_prompt="blurry",
        generator=torch.Generator("cpu").manual_seed(3),
        num_images_per_prompt=settings.pop("num_images"),
        output_type="np",
        **settings,
    ).images
    assert ours.clip_pixels.shape == reference.shape
    assert np.abs(ours.clip_pixels - reference).max() < 1e-4


@pytest.mark.parametrize("scheduler", ["dpm++", "euler_a"])
def test_ella_side_equals_the_official_proxy_unet_approach(tiny, scheduler):
    length = 16  # a fixed T5 length gives cond and uncond the same shape, as diffusers needs
    ours = generate(
        tiny, PROMPT, seed=5, scheduler=scheduler, t5_length=length, sides="ella", guidance_scale=9, **SMALL
    )
    cond = tiny.t5_encoder.encode(PROMPT, length).features
    uncond = tiny.t5_encoder.encode("", length).features
    reference = diffusers_pipeline(tiny, scheduler, EllaProxyUNet(tiny.pipe.unet, tiny.ella))(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        generator=torch.Generator("cpu").manual_seed(5),
        guidance_scale=9,
        output_type="np",
        **SMALL,
    ).images
    assert np.abs(ours.ella_pixels - reference).max() < 1e-4


@pytest.mark.parametrize("mode", ["ella", "ella+clip"])
def test_one_batched_unet_call_equals_separate_runs(tiny, mode):
    both = generate(tiny, PROMPT, negative_prompt="dark", seed=11, mode=mode, num_images=2, **SMALL)
    clip_only = generate(tiny, PROMPT, negative_prompt="dark", seed=11, mode=mode, num_images=2, sides="clip", **SMALL)
    ella_only = generate(tiny, PROMPT, negative_prompt="dark", seed=11, mode=mode, num_images=2, sides="ella", **SMALL)
    assert np.abs(both.clip_pixels - clip_only.clip_pixels).max() < 1e-4
    assert np.abs(both.ella_pixels - ella_only.ella_pixels).max() < 1e-4
    assert clip_only.ella_images == [] and ella_only.clip_images == []


def test_the_unet_is_called_once_per_step_for_both_sides(tiny):
    calls = []
    handle = tiny.pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(args[0].shape[0]), with_kwargs=True
    )
    try:
        generate(tiny, PROMPT, num_images=3, **SMALL)
    finally:
        handle.remove()
    assert calls == [2 * 2 * 3] * SMALL["num_inference_steps"]  # 2 sides x (uncond, cond) x 3 images


def test_both_sides_start_from_identical_latents(tiny):
    first_inputs = []

    def keep_first(module, args, kwargs):
        if not first_inputs:
            first_inputs.append(args[0].clone())

    handle = tiny.pipe.unet.register_forward_pre_hook(keep_first, with_kwargs=True)
    try:
        generate(tiny, PROMPT, num_images=2, **SMALL)
    finally:
        handle.remove()
    clip_rows, ella_rows = first_inputs[0].chunk(2)
    assert torch.equal(clip_rows, ella_rows)


def test_same_seed_is_identical_and_different_seeds_differ(tiny):
    first = generate(tiny, PROMPT, seed=1, **SMALL)
    again = generate(tiny, PROMPT, seed=1, **SMALL)
    other = generate(tiny, PROMPT, seed=2, **SMALL)
    assert np.array_equal(first.ella_pixels, again.ella_pixels)
    assert np.array_equal(first.clip_pixels, again.clip_pixels)
    assert np.abs(first.ella_pixels - other.ella_pixels).max() > 1e-3


def test_guidance_changes_the_image_and_scale_one_means_no_guidance(tiny):
    unguided = generate(tiny, PROMPT, guidance_scale=1.0, **SMALL)
    guided = generate(tiny, PROMPT, guidance_scale=12.0, **SMALL)
    assert np.abs(unguided.ella_pixels - guided.ella_pixels).max() > 1e-3
    calls = []
    handle = tiny.pipe.unet.register_forward_pre_hook(lambda m, a, k: calls.append(a[0].shape[0]), with_kwargs=True)
    try:
        generate(tiny, PROMPT, guidance_scale=1.0, **SMALL)
    finally:
        handle.remove()
    assert calls[0] == 2  # one conditional row per side


def test_negative_prompt_changes_both_sides(tiny):
    plain = generate(tiny, PROMPT, seed=4, **SMALL)
    negative = generate(tiny, PROMPT, negative_prompt="green dog", seed=4, **SMALL)
    assert np.abs(plain.clip_pixels - negative.clip_pixels).max() > 1e-4
    assert np.abs(plain.ella_pixels - negative.ella_pixels).max() > 1e-4


def test_unconditional_connector_outputs_are_cached_per_negative_prompt_and_timestep(tiny):
    tiny.condition_cache.clear()
    generate(tiny, PROMPT, negative_prompt="fog", **SMALL)
    assert tiny.condition_cache.misses == SMALL["num_inference_steps"]
    generate(tiny, "another prompt", negative_prompt="fog", **SMALL)
    assert tiny.condition_cache.hits == SMALL["num_inference_steps"]
    assert tiny.condition_cache.misses == SMALL["num_inference_steps"]


def snapshot_shared_state(models):
    scheduler = models.pipe.scheduler
    return (
        dict(models.pipe.unet.attn_processors),
        dict(scheduler.config),
        scheduler.num_inference_steps,
        None if scheduler.timesteps is None else torch.as_tensor(scheduler.timesteps).clone(),
    )


def assert_shared_state_equal(before, after):
    processors_before, config_before, steps_before, timesteps_before = before
    processors_after, config_after, steps_after, timesteps_after = after
    assert processors_after.keys() == processors_before.keys()
    assert all(processors_after[name] is processors_before[name] for name in processors_before)
    assert config_after == config_before and steps_after == steps_before
    assert (timesteps_after is None and timesteps_before is None) or torch.equal(timesteps_after, timesteps_before)


def test_shared_scheduler_and_processors_unchanged_after_a_traced_run(tiny):
    before = snapshot_shared_state(tiny)
    generate(tiny, PROMPT, trace=True, scheduler="euler", num_inference_steps=5, height=32, width=32)
    assert_shared_state_equal(before, snapshot_shared_state(tiny))


def test_shared_state_restored_after_a_run_that_raises(tiny):
    before = snapshot_shared_state(tiny)

    def fail_midway(step, total):
        if step == 2:
            raise RuntimeError("simulated failure mid-run")

    with pytest.raises(RuntimeError, match="simulated failure"):
        generate(tiny, PROMPT, trace=True, progress=fail_midway, **SMALL)
    assert_shared_state_equal(before, snapshot_shared_state(tiny))
    after_failure = generate(tiny, PROMPT, seed=9, **SMALL)  # and the next run works
    assert after_failure.ella_pixels.shape == (1, 32, 32, 3)


@pytest.mark.parametrize("mode", ["ella", "ella+clip"])
def test_tracing_does_not_change_the_images(tiny, mode):
    plain = generate(tiny, PROMPT, seed=6, mode=mode, num_images=2, **SMALL)
    traced = generate(tiny, PROMPT, seed=6, mode=mode, num_images=2, trace=True, **SMALL)
    assert np.array_equal(plain.ella_pixels, traced.ella_pixels)  # identical pixels, not merely close
    assert np.array_equal(plain.clip_pixels, traced.clip_pixels)
    assert plain.trace is None and traced.trace is not None


def test_official_seeding_equals_diffusers_with_one_generator_per_image(tiny):
    """The official demo passes [Generator(device).manual_seed(seed + i) for i in range(n)] to diffusers."""
    settings = {"guidance_scale": 7.5, **SMALL}
    ours = generate(tiny, PROMPT, seed=40, num_images=3, seeding="official", sides="clip", **settings)
    reference = diffusers_pipeline(tiny, "dpm++")(
        PROMPT,
        generator=[torch.Generator("cpu").manual_seed(40 + index) for index in range(3)],
        num_images_per_prompt=3,
        output_type="np",
        **settings,
    ).images
    assert np.abs(ours.clip_pixels - reference).max() < 1e-4
    assert ours.seeding == "official: one cpu generator per image, seeds 40 to 42"
    default = generate(tiny, PROMPT, seed=40, num_images=3, sides="clip", **settings)
    assert np.abs(default.clip_pixels - reference).max() > 1e-3  # the default draws differently


@pytest.mark.parametrize("scheduler", ["dpm++", "euler_a"])
def test_a_callers_generators_drive_both_sides(tiny, scheduler):
    official = generate(tiny, PROMPT, seed=8, num_images=2, seeding="official", scheduler=scheduler, **SMALL)
    given = generate(
        tiny,
        PROMPT,
        num_images=2,
        scheduler=scheduler,
        generator=[torch.Generator().manual_seed(8), torch.Generator().manual_seed(9)],
        **SMALL,
    )
    assert np.array_equal(given.ella_pixels, official.ella_pixels)
    assert np.array_equal(given.clip_pixels, official.clip_pixels)
    single = generate(tiny, PROMPT, generator=torch.Generator().manual_seed(3), **SMALL)
    seeded = generate(tiny, PROMPT, seed=3, **SMALL)
    assert np.array_equal(single.ella_pixels, seeded.ella_pixels)
    assert single.seeding == "the caller's generator(s)"


@pytest.mark.parametrize(
    ("generator", "message"),
    [
        ([torch.Generator()], "generator must hold one generator per image: 2, got 1"),
        ("seed", "generator must be a torch.Generator or a list of them, got str"),
        ([torch.Generator(), 3], "generator must be a torch.Generator or a list of them, got list"),
    ],
)
def test_bad_generators_are_named(tiny, generator, message):
    with pytest.raises(SettingsError, match=message):
        generate(tiny, PROMPT, num_images=2, generator=generator, **SMALL)


def test_pndm_runs_one_more_timestep_and_everything_counts_what_ran(tiny):
    calls = []
    result = generate(
        tiny, PROMPT, scheduler="pndm", trace=True, progress=lambda done, total: calls.append((done, total)), **SMALL
    )
    ran = SMALL["num_inference_steps"] + 1
    assert len(result.timesteps) == ran
    assert calls == [(step, ran) for step in range(1, ran + 1)]
    assert result.trace.tsc_attention.shape[0] == ran
    assert result.trace.sides["ella"].previews.shape[0] == ran


def test_timer_reads_cuda_events_once_instead_of_synchronising_every_step(monkeypatch):
    from ella_demo.core.timing import PhaseTimer

    synchronisations = []

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing):
            self.time = None

        def record(self):
            FakeEvent.clock += 0.5
            self.time = FakeEvent.clock

        def elapsed_time(self, end):
            return (end.time - self.time) * 1000  # milliseconds, like CUDA

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synchronisations.append(device))
    timer = PhaseTimer(torch.device("cuda"))
    for _ in range(25):
        with timer.phase("unet"):
            pass
        with timer.phase("tsc"):
            pass
    assert synchronisations == []  # nothing waited during the loop
    totals = timer.totals()
    assert len(synchronisations) == 1
    assert totals == pytest.approx({"unet": 12.5, "tsc": 12.5})


@pytest.mark.parametrize(
    ("model_dtype", "expected"),
    [(torch.float16, torch.float16), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)],
)
def test_trace_sums_use_the_model_dtype_where_precision_allows(tiny, model_dtype, expected):
    from ella_demo.core.tracing import CrossAttentionRecorder, accumulator_dtype

    dtype = accumulator_dtype(model_dtype)
    assert dtype == expected
    recorder = CrossAttentionRecorder({"clip": (0, 77)}, (4, 4), 2, "cpu", dtype)
    attention = tiny.pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    recorder.record(attention, torch.randn(1, 16, attention.query_dim), torch.randn(1, 77, 32), None)
    assert all(total.dtype == expected for total in recorder._sums.values())


@pytest.mark.parametrize("mode", ["ella", "ella+clip"])
def test_trace_shapes_and_normalisation(tiny, mode):
    steps, count = 4, 2
    result = generate(
        tiny, PROMPT, num_inference_steps=steps, height=64, width=48, num_images=count, trace=True, mode=mode
    )
    trace = result.trace
    queries, layers, heads = tiny.ella.config.num_latents, tiny.ella.config.layers, tiny.ella.config.heads
    t5_length = len(trace.t5_tokens)
    assert trace.timesteps.shape == (steps,)
    assert trace.tsc_attention.shape == (steps, layers, heads, queries, queries + t5_length)
    assert trace.tsc_attention.dtype == np.float16
    assert np.allclose(trace.tsc_attention.astype(np.float32).sum(-1), 1, atol=2e-3)
    ella_keys = queries + (77 if mode == "ella+clip" else 0)
    for side, keys in (("clip", 77), ("ella", ella_keys)):
        side_trace = trace.sides[side]
        assert len(side_trace.tokens) == keys
        assert side_trace.previews.shape == (steps, count, 8, 6, 3)
        assert side_trace.previews.dtype == np.uint8
        # latent 8x6: full-resolution layers pooled to 4x3, then the 4x3 and 2x2 (ceil) levels
        assert {name: maps.shape for name, maps in side_trace.cross_attention.items()} == {
            "8x6": (steps, 4, 3, keys),
            "4x3": (steps, 4, 3, keys),
            "2x2": (steps, 2, 2, keys),
        }
        assert side_trace.pooled == ("8x6",)
        for maps in side_trace.cross_attention.values():
            assert np.allclose(maps.astype(np.float32).sum(-1), 1, atol=2e-3)
    assert [word.text for word in trace.t5_words][:3] == ["a", "red", "cat"]


def test_trace_records_the_connector_attention_of_each_steps_timestep(tiny):
    result = generate(tiny, PROMPT, trace=True, **SMALL)
    features = tiny.t5_encoder.encode(PROMPT).features
    for step, timestep in enumerate(result.trace.timesteps):
        with torch.no_grad():
            _, expected = tiny.ella(features, torch.tensor(timestep), return_attention=True)
        assert np.allclose(result.trace.tsc_attention[step], expected[0].numpy(), atol=1e-3)


def test_timings_cover_every_phase(tiny):
    result = generate(tiny, PROMPT, **SMALL)
    assert set(result.timings) == {"t5", "clip", "tsc", "unet", "vae", "total"}
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.timings["total"] >= result.timings["unet"]
    traced = generate(tiny, PROMPT, trace=True, **SMALL)
    assert traced.trace.timings == traced.timings


def test_truncated_prompts_are_reported_in_the_result(tiny):
    with pytest.warns(UserWarning):
        result = generate(tiny, "red " * 200, t5_length=128, **SMALL)
    assert any(note.startswith("CLIP:") and "last 125 tokens" in note for note in result.warnings)
    assert any(note.startswith("T5:") and "last 73 tokens" in note for note in result.warnings)


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_every_scheduler_runs(tiny, scheduler):
    result = generate(tiny, PROMPT, scheduler=scheduler, **SMALL)
    assert np.isfinite(result.ella_pixels).all() and np.isfinite(result.clip_pixels).all()


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("seed", -1, "seed must be a whole number from 0 to 4294967295, got -1"),
        ("seed", 2**32, "seed must be a whole number from 0 to 4294967295"),
        ("num_inference_steps", 0, "num_inference_steps must be a whole number from 1 to 150, got 0"),
        ("num_inference_steps", 151, "from 1 to 150, got 151"),
        ("guidance_scale", 31, "guidance_scale must be a number from 0 to 30, got 31"),
        ("guidance_scale", -0.5, "guidance_scale must be a number from 0 to 30"),
        ("num_images", 5, "num_images must be a whole number from 1 to 4, got 5"),
        ("height", 36, "height must be a multiple of 8 from 8 to 1024, got 36"),
        ("width", 2048, "width must be a whole number from 8 to 1024, got 2048"),
        ("scheduler", "lms", "scheduler must be one of dpm\\+\\+, ddim, euler, euler_a, unipc, pndm, got 'lms'"),
        ("mode", "t5", "mode must be one of ella, ella\\+clip, got 't5'"),
        ("t5_length", 0, "t5_length must be 'flexible' or a token count from 1 to 512"),
        ("sides", "left", "sides must be one of both, clip, ella"),
        ("prompt", None, "prompt must be text, got NoneType"),
        ("prompt", "a red \ud800 cat", "prompt contains a character that is not valid text \\(position 6\\)"),
        ("num_inference_steps", 2.5, "num_inference_steps must be a whole number from 1 to 150, got 2.5"),
        ("num_inference_steps", 3.0, "num_inference_steps must be a whole number from 1 to 150, got 3.0"),
        ("num_images", True, "num_images must be a whole number from 1 to 4, got True"),
        ("height", 32.0, "height must be a whole number from 8 to 1024, got 32.0"),
        ("guidance_scale", float("nan"), "guidance_scale must be a number from 0 to 30, got nan"),
        ("guidance_scale", "7", "guidance_scale must be a number from 0 to 30, got '7'"),
        ("seeding", "gpu", "seeding must be one of cpu, official, got 'gpu'"),
        ("trace", "yes", "trace must be True or False, got 'yes'"),
    ],
)
def test_bad_arguments_are_rejected_before_any_model_work(tiny, argument, value, message):
    misses = tiny.t5_encoder.cache.misses + tiny.clip_encoder.cache.misses
    arguments = {"prompt": "a never seen prompt", **SMALL, argument: value}
    with pytest.raises(SettingsError, match=message):
        generate(tiny, **arguments)
    assert tiny.t5_encoder.cache.misses + tiny.clip_encoder.cache.misses == misses


@pytest.mark.parametrize(
    ("preset", "size", "message"),
    [
        ("sd15", 128, "height must be a whole number from 256 to 1024, got 128"),
        ("random-sd15", 64, "height must be a whole number from 256 to 1024, got 64"),
        ("sd15", 1032, "height must be a whole number from 256 to 1024, got 1032"),
        ("pocket", 16, "height must be a whole number from 32 to 256, got 16"),
        ("pocket", 512, "height must be a whole number from 32 to 256, got 512"),
        ("pocket", 60, "height must be a multiple of 8 from 32 to 256, got 60"),
        ("tiny", 0, "height must be a whole number from 8 to 1024, got 0"),
        ("tiny", 2048, "height must be a whole number from 8 to 1024, got 2048"),
    ],
)
def test_each_preset_refuses_sizes_outside_its_range(preset, size, message):
    from ella_demo.core.settings import GenerationSettings, validate

    with pytest.raises(SettingsError, match=message):
        validate(GenerationSettings(prompt="x", height=size), preset)
    with pytest.raises(SettingsError, match=message.replace("height", "width")):
        validate(GenerationSettings(prompt="x", width=size), preset)


@pytest.mark.parametrize(
    ("preset", "sizes"),
    [("sd15", (256, 512, 1024)), ("random-sd15", (256, 768)), ("pocket", (32, 64, 128, 256)), ("tiny", (8, 64, 1024))],
)
def test_each_preset_accepts_its_sizes_and_none_for_the_native_size(preset, sizes):
    from ella_demo.core.settings import GenerationSettings, validate

    validate(GenerationSettings(prompt="x"), preset)  # both sizes None: resolved later
    for size in sizes:
        validate(GenerationSettings(prompt="x", height=size, width=size), preset)
        validate(GenerationSettings(prompt="x", height=size), preset)


def test_size_ranges_per_preset():
    from ella_demo.core.settings import size_range

    assert size_range("tiny") == (8, 1024)
    assert size_range("pocket") == (32, 256)
    assert size_range("sd15") == size_range("random-sd15") == (256, 1024)


def test_no_size_given_is_the_models_native_size(tiny):
    assert tiny.native_size == tiny.pipe.unet.config.sample_size * tiny.pipe.vae_scale_factor == 64
    result = generate(tiny, PROMPT, num_inference_steps=2, trace=True)
    assert (result.settings.height, result.settings.width) == (64, 64)
    assert [image.size for image in result.clip_images + result.ella_images] == [(64, 64), (64, 64)]
    assert result.clip_pixels.shape[1:3] == (64, 64)
    assert result.latents["ella"].shape[-2:] == (8, 8)
    assert result.trace.settings["height"] == result.trace.settings["width"] == 64
    assert result.trace.sides["ella"].previews.shape[2:4] == (8, 8) and "8x8" in result.trace.sides["clip"].pooled


def test_given_sizes_are_honoured_and_one_missing_side_is_native(tiny):
    both = generate(tiny, PROMPT, num_inference_steps=2, height=32, width=48)
    assert both.ella_images[0].size == (48, 32) and (both.settings.height, both.settings.width) == (32, 48)
    height_only = generate(tiny, PROMPT, num_inference_steps=2, height=32)
    assert height_only.ella_images[0].size == (64, 32) and height_only.settings.width == 64
    width_only = generate(tiny, PROMPT, num_inference_steps=2, width=16)
    assert width_only.clip_images[0].size == (16, 64) and width_only.settings.height == 64


def test_run_resolves_the_native_size_too(tiny):
    from ella_demo.core.engine import run
    from ella_demo.core.settings import GenerationSettings

    result = run(tiny, GenerationSettings(prompt=PROMPT, num_inference_steps=2, sides="ella"))
    assert result.ella_images[0].size == (64, 64) and result.settings.height == result.settings.width == 64


def test_empty_prompt_is_allowed_on_both_sides(tiny):
    result = generate(tiny, "", **SMALL)
    assert len(result.clip_images) == 1 and len(result.ella_images) == 1


def test_concurrent_traced_and_untraced_runs_keep_their_own_results(tiny):
    """Recording processors observe only the request that installed them."""
    from concurrent.futures import ThreadPoolExecutor

    solo_traced = generate(tiny, PROMPT, seed=1, trace=True, **SMALL)
    solo_plain = generate(tiny, "three white birds", seed=2, **SMALL)
    with ThreadPoolExecutor(max_workers=2) as pool:
        traced = pool.submit(generate, tiny, PROMPT, seed=1, trace=True, **SMALL)
        plain = pool.submit(generate, tiny, "three white birds", seed=2, **SMALL)
        traced, plain = traced.result(), plain.result()
    assert np.abs(traced.ella_pixels - solo_traced.ella_pixels).max() < 1e-5
    assert np.abs(plain.ella_pixels - solo_plain.ella_pixels).max() < 1e-5
    assert plain.trace is None
    for side in ("clip", "ella"):
        for name, maps in traced.trace.sides[side].cross_attention.items():
            assert np.allclose(maps, solo_traced.trace.sides[side].cross_attention[name], atol=1e-3), (side, name)


# --- The loop's diffusers-style extension points: latents=, output_type, callbacks, processors ----------


def initial_noise(models, seed: int, count: int = 1) -> torch.Tensor:
    """The noise `seeding="cpu"` draws for `seed`: (count, 4, 4, 4) for 32 px."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor((count, 4, 4, 4), generator=torch.Generator("cpu").manual_seed(seed), dtype=models.dtype)


def test_given_latents_replace_the_seeded_noise_as_in_diffusers(tiny):
    noise = initial_noise(tiny, seed=21, count=2)
    seeded = generate(tiny, PROMPT, seed=21, num_images=2, **SMALL)
    given = generate(tiny, PROMPT, seed=999, num_images=2, latents=noise, **SMALL)
    assert np.array_equal(seeded.ella_pixels, given.ella_pixels) and np.array_equal(
        seeded.clip_pixels, given.clip_pixels
    )
    reference = diffusers_pipeline(tiny, "dpm++")(
        PROMPT, latents=noise, num_images_per_prompt=2, guidance_scale=10.0, output_type="np", **SMALL
    ).images
    assert np.abs(given.clip_pixels - reference).max() < 1e-4


@pytest.mark.parametrize(
    ("latents", "message"),
    [(torch.zeros(1, 4, 8, 8), r"latents must be a tensor of shape \(1, 4, 4, 4\)"), ([0.0], "got list")],
)
def test_latents_of_the_wrong_shape_are_named(tiny, latents, message):
    with pytest.raises(SettingsError, match=message):
        generate(tiny, PROMPT, latents=latents, **SMALL)


def test_latent_output_skips_decoding_and_matches_the_decoded_run(tiny):
    decoded = generate(tiny, PROMPT, seed=5, **SMALL)
    latent = generate(tiny, PROMPT, seed=5, output_type="latent", **SMALL)
    assert latent.clip_images == [] and latent.ella_pixels is None and "vae" not in latent.timings
    for side in ("clip", "ella"):
        assert latent.latents[side].shape == (1, 4, 4, 4)
        assert torch.equal(latent.latents[side], decoded.latents[side])
    vae = tiny.pipe.vae
    with torch.no_grad():
        pixels = vae.decode(latent.latents["ella"] / vae.config.scaling_factor).sample
    assert np.abs((pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy() - decoded.ella_pixels).max() < 1e-6
    with pytest.raises(SettingsError, match="output_type must be one of pil, latent, got 'np'"):
        generate(tiny, PROMPT, output_type="np", **SMALL)


def test_step_callback_sees_only_the_tensors_it_asks_for(tiny):
    from ella_demo.core.engine import run
    from ella_demo.core.settings import GenerationSettings

    seen = []
    settings = GenerationSettings(prompt=PROMPT, seed=2, **SMALL)
    result = run(tiny, settings, callback_on_step_end=seen.append, callback_on_step_end_tensor_inputs=["latents"])
    assert [state.step for state in seen] == [0, 1, 2] and {state.num_steps for state in seen} == {3}
    assert all(set(state.tensors) == {"latents"} for state in seen)
    assert torch.equal(seen[-1].tensors["latents"]["ella"].float(), result.latents["ella"])
    with pytest.raises(SettingsError, match="unknown names"):
        run(tiny, settings, callback_on_step_end=seen.append, callback_on_step_end_tensor_inputs=["noise"])


def test_a_tracer_plugged_into_the_loop_by_hand_records_what_generate_records(tiny):
    """Tracing needs nothing but the loop's public extension points."""
    from ella_demo.core.engine import run
    from ella_demo.core.settings import GenerationSettings
    from ella_demo.core.tracing import Tracer

    settings = GenerationSettings(prompt=PROMPT, seed=4, trace=True, **SMALL)
    tracer = Tracer(tiny, settings)
    result = run(
        tiny,
        settings,
        cross_attention_kwargs=tracer.cross_attention_kwargs,
        callback_on_step_end=tracer.on_step_end,
        callback_on_step_end_tensor_inputs=Tracer.TENSOR_INPUTS,
    )
    by_hand = tracer.finish(result)
    expected = generate(tiny, PROMPT, seed=4, trace=True, **SMALL).trace
    assert np.array_equal(by_hand.tsc_attention, expected.tsc_attention)
    for side in ("clip", "ella"):
        assert np.array_equal(by_hand.sides[side].previews, expected.sides[side].previews)
        for name, maps in expected.sides[side].cross_attention.items():
            assert np.array_equal(by_hand.sides[side].cross_attention[name], maps)


def test_recording_processors_are_installed_once_and_pass_through_untraced_calls(tiny):
    from ella_demo.core.tracing import RecordingAttnProcessor, install_recording_processors

    processors = dict(tiny.pipe.unet.attn_processors)
    assert all(isinstance(processor, RecordingAttnProcessor) for processor in processors.values())
    install_recording_processors(tiny.pipe.unet)  # a second installation wraps nothing twice
    assert all(tiny.pipe.unet.attn_processors[name] is processor for name, processor in processors.items())
    reference = diffusers_pipeline(tiny, "dpm++")
    reference.unet = type(tiny.pipe.unet).from_config(tiny.pipe.unet.config)  # pristine processors
    reference.unet.load_state_dict(tiny.pipe.unet.state_dict())
    expected = reference(PROMPT, generator=torch.Generator().manual_seed(3), output_type="np", **SMALL).images
    ours = generate(tiny, PROMPT, seed=3, sides="clip", guidance_scale=7.5, **SMALL)
    assert np.abs(ours.clip_pixels - expected).max() < 1e-4
