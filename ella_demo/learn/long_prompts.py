"""Long prompts: where CLIP's 77-token window cuts a dense prompt, and what the language model keeps.

CLIP reads at most 77 tokens (start and end included): every word after the cut is never seen by the CLIP
side. The connector's language model reads up to 512 (T5, and the pocket world's MiniLM). The lesson marks
the cut, generates both sides, and in the pocket world measures how often each side draws the objects that
are named only after the cut.
"""

from __future__ import annotations

from ella_demo.core.adapters import resolve_lora_weights
from ella_demo.core.errors import InputError
from ella_demo.core.text_encoding import FLEXIBLE, TextEncoding
from ella_demo.inspect.figures import category_bars_figure, to_image
from ella_demo.inspect.lesson_figures import image_grid_figure, prompt_cut_figure
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner
from ella_demo.learn.measure import Evidence, drawn_as_asked, percentages, requested_objects

NAME = "long_prompts"
TITLE = "Long prompts: what CLIP never reads"
_POCKET_FILLER = " The red circle is large and filled, and the background is white."
EXAMPLES = {
    "pocket": (
        "On a white background there is a large red circle, drawn filled."
        + _POCKET_FILLER * 4
        + " Below the red circle there is a large blue square, filled.",
    ),
    "sd15": (
        "A cozy reading corner in a sunlit attic: a worn green velvet armchair with a knitted cream blanket draped "
        "over one arm, a tall wooden bookshelf packed with old leather-bound books, a round side table holding a "
        "steaming cup of tea on a saucer and a pair of round glasses, a ginger cat curled asleep on a striped rug, "
        "dust glittering in the light from a small round window, a potted fern on the windowsill, and in the far "
        "corner a bright red umbrella leaning against a blue suitcase.",
    ),
}
PAPER = (
    "Cited from the paper, not measured here: DPG-Bench's 1,065 prompts are dense descriptions of this kind, and "
    "ELLA-SD1.5 scores 74.91 on them against SD1.5's 63.18 (paper, table 4)."
)
LOOK_FOR = (
    "The highlighted tail of the prompt is what CLIP cuts off: the CLIP side is generated as if it were never "
    "written, while the language model reads it all. Look for the objects named only in the tail: in the pocket "
    "world the bars count how often each side draws them."
)


def kept_characters(encoding: TextEncoding) -> int:
    """How many characters of the prompt the encoder read: the end of the last token it kept."""
    return max((end for _, end in encoding.offsets), default=0)


def named_only_after(prompt: str, cut: int) -> tuple[tuple[str, str], ...]:
    """The (colour, shape) objects named after character `cut` whose colour is not named before it: a picture
    showing that colour must have read the tail."""
    before = {colour for colour, _ in requested_objects(prompt[:cut])}
    return tuple(pair for pair in requested_objects(prompt[cut:]) if pair[0] not in before)


def images(options: LessonOptions) -> int:
    """How many generations the lesson runs: one per seed."""
    return options.seeds


def lesson(runner: LessonRunner, options: LessonOptions) -> LessonResult:
    """Mark each encoder's cut, generate both sides per seed, and (pocket) check the objects after CLIP's cut."""
    prompt = options.prompt or runner.examples(EXAMPLES)[0]
    if not prompt.strip():
        raise InputError("prompt", "is empty: type a long, dense prompt (more than 77 CLIP tokens shows the cut).")
    runner.check_prompts(prompt)
    models = runner.models
    with models.adapters.active(resolve_lora_weights(models.loras, None)):  # CLIP as the lesson's runs read it
        clip, t5 = models.clip_encoder.encode(prompt), models.t5_encoder.encode(prompt, FLEXIBLE)
    cut = kept_characters(clip)
    numbers = {
        "prompt": prompt,
        "clip_tokens": int(clip.attention_mask.sum()) + clip.dropped_tokens,
        "clip_window": clip.max_length,
        "clip_dropped_tokens": clip.dropped_tokens,
        "clip_dropped_text": prompt[cut:].strip(),
        "language_model_tokens": len(t5.tokens),
        "language_model_dropped_tokens": t5.dropped_tokens,
    }
    results = [runner.generate(prompt, seed) for seed in runner.seeds]
    cuts = {
        f"CLIP (keeps {clip.max_length} tokens)": cut,
        f"language model ({len(t5.tokens)} tokens)": kept_characters(t5),
    }
    figures = {
        "cut": to_image(prompt_cut_figure(prompt, cuts)),
        "pictures": to_image(
            image_grid_figure(
                [[result.clip_images[0], result.ella_images[0]] for result in results],
                [f"seed {seed}" for seed in runner.seeds],
                ["CLIP", "ELLA"],
                "The same long prompt, both sides",
            )
        ),
    }
    late = named_only_after(prompt, cut) if clip.dropped_tokens else ()
    if not runner.measured:
        return LessonResult(NAME, TITLE, LOOK_FOR, Evidence("cited", PAPER), numbers, figures)
    if not late:
        note = Evidence("measured", "No object is named (colour before shape) after the cut.")
        return LessonResult(NAME, TITLE, LOOK_FOR, note, numbers, figures)
    return LessonResult(NAME, TITLE, LOOK_FOR, _measure_late_objects(results, late, figures, numbers), numbers, figures)


def _measure_late_objects(results: list, late: tuple, figures: dict, numbers: dict) -> Evidence:
    """How often each side draws the objects named after CLIP's cut; adds their numbers and bar chart."""
    numbers["after_the_cut"] = [list(pair) for pair in late]
    drawn = {side: drawn_as_asked([getattr(result, f"{side}_images")[0] for result in results], late)
             for side in ("clip", "ella")}  # fmt: skip
    numbers["late_objects_drawn"] = drawn
    title = "Pictures showing the objects named after the cut (%)"
    figures["late_objects"] = to_image(category_bars_figure(percentages(drawn), title))
    text = ", ".join(
        f"{side.upper()} {kinds['colour']['hits']} of {kinds['colour']['of']}" for side, kinds in drawn.items()
    )
    return Evidence(
        "measured",
        f"Measured by the pocket detector, pictures with the colour of every object named after CLIP's cut: {text}.",
    )
