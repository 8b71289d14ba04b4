"""How the pieces connect: one traced run, drawn as the two paths it takes, with the run's own tensor shapes.

prompt -> language model -> connector (timestep embedding, learnable queries, blocks) -> UNet cross-attention,
and prompt -> CLIP -> UNet cross-attention; both sides share the UNet, the seed and the noise. Every shape is
read from this run's tensors, so a preset with other sizes shows its own. Each block opens a view of the run:
the tokens each encoder read, the connector's queries, the UNet's word maps.
"""

from __future__ import annotations

import torch

from ella_demo.core.results import GenerationResult
from ella_demo.inspect.connector_attention import Aggregation
from ella_demo.inspect.figures import to_image
from ella_demo.inspect.lesson_figures import pipeline_figure
from ella_demo.inspect.views import RunViews
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner
from ella_demo.learn.measure import Evidence

NAME = "pieces"
TITLE = "How the pieces connect"
EXAMPLES = {
    "pocket": ("A large red square left of a small blue circle, on a white background.",),
    "sd15": ("a red cube left of a blue ball on a wooden table, soft morning light",),
}
# Which view of the run each block of the diagram opens.
BLOCK_VIEWS = {
    "prompt": "tokens",
    "t5": "tokens",
    "clip": "tokens",
    "connector": "connector queries",
    "unet": "word maps",
    "vae": "pictures",
}


def images(options: LessonOptions) -> int:
    """How many generations the lesson runs: one traced pair."""
    return 1


def live_shapes(runner: LessonRunner, result: GenerationResult) -> dict[str, str]:
    """Each block's tensor shapes in this run, as text: (batch, tokens, width) and so on."""
    config, trace = runner.models.ella.config, result.trace
    steps, _, _, queries, keys = trace.tsc_attention.shape
    t5_tokens, clip_tokens = keys - queries, len(result.prompt_tokens["clip"].tokens)
    clip_width = runner.models.pipe.text_encoder.config.hidden_size
    latents = tuple(result.latents["ella"].shape)
    size = result.settings.height, result.settings.width
    return {
        "prompt": f"{len(result.settings.prompt)} characters\nlanguage model: {t5_tokens} tokens\n"
        f"CLIP: {clip_tokens} tokens",
        "t5": f"features (1, {t5_tokens}, {config.input_dim})\nfrozen",
        "connector": f"timestep -> embedding (1, {config.time_embed_dim})\n{queries} queries x {config.layers} blocks,"
        f" {config.heads} heads\nout (1, {queries}, {config.width}) per step",
        "clip": f"features (1, {clip_tokens}, {clip_width})\nfrozen, the same at every step",
        "unet": f"latents {latents}\nreads {queries} ELLA or {clip_tokens} CLIP tokens\n{steps} steps, frozen",
        "vae": f"latents {latents}\n-> picture (1, 3, {size[0]}, {size[1]})",
    }


def lesson(runner: LessonRunner, options: LessonOptions) -> LessonResult:
    """One traced run at the first seed; the diagram, and the views its blocks open."""
    prompt = options.prompt or runner.examples(EXAMPLES)[0]
    result = runner.generate(prompt, options.seed, trace=True)
    shapes = live_shapes(runner, result)
    views = RunViews(result)
    figures = {"pipeline": to_image(pipeline_figure(shapes, f"One run of: {prompt}"))}
    if views.has_words:
        last = views.steps - 1
        figures["connector_queries"] = views.query_heatmap(last, Aggregation())
        figures["word_maps"] = views.word_maps(views.default_word(), "all", last)
    change = connector_change(runner, prompt, result)
    evidence = Evidence(
        "measured",
        "Token counts, steps, latents and pictures are read from this run's tensors (per prompt; guidance doubles the "
        "UNet's batch), widths from the loaded models' configs. The connector's tokens at the last step differ from "
        f"those at the first by {change:.0%} of their norm; CLIP's are the same tensor at every step.",
    )
    numbers = {"prompt": prompt, "shapes": shapes, "block_views": BLOCK_VIEWS, "connector_change": change}
    return LessonResult(NAME, TITLE, LOOK_FOR, evidence, numbers, figures, run=result)


LOOK_FOR = (
    "Both sides share one UNet, one seed and one noise: only what the UNet's cross-attention reads differs. CLIP's "
    "features are computed once, while the connector turns the language model's features into new tokens at "
    "every step, because its queries and normalisations depend on the timestep."
)


def connector_change(runner: LessonRunner, prompt: str, result: GenerationResult) -> float:
    """||out(t_last) - out(t_first)|| / ||out(t_first)|| for the connector's (1, Q, width) output on the prompt, at
    the run's first and last timesteps."""
    features = runner.models.t5_encoder.encode(prompt, result.settings.t5_length).features.to(runner.models.dtype)
    with torch.no_grad():
        first, last = (runner.models.ella(features, torch.tensor([int(t)], device=features.device)).float()
                       for t in (result.timesteps[0], result.timesteps[-1]))  # fmt: skip
    return float((last - first).norm() / first.norm())
