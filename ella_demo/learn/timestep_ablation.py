"""Timestep-aware or not: the connector fed one fixed timestep for the whole run, against the real per-step one.

The trained connector makes different tokens at different timesteps. Feeding it one timestep at every step
(the engine's `connector_timestep`) freezes that: the UNet reads the tokens meant for high noise, or for low
noise, all the way. The paper's ablation (section 5.3) trains a connector without timestep input instead; this
lesson asks a related, cheaper question of the trained connector: does it matter which timestep it is told?
"""

from __future__ import annotations

from ella_demo.inspect.figures import category_bars_figure, to_image
from ella_demo.inspect.lesson_figures import image_grid_figure
from ella_demo.learn.base import LessonOptions, LessonResult, LessonRunner
from ella_demo.learn.measure import Evidence, drawn_as_asked, percentages, requested_objects

NAME = "timestep_aware"
TITLE = "Timestep-aware or not: a fixed timestep for the connector"
EXAMPLES = {
    "pocket": ("A large red square on a white background, drawn filled.",),
    "sd15": ("a red cube left of a blue ball, an oil painting in the style of Van Gogh",),
}
FIXED_TIMESTEPS = (999, 500, 100)
VARIANTS = ("real", *(f"fixed {timestep}" for timestep in FIXED_TIMESTEPS))
PAPER = (
    "Cited from the paper, not measured here: the connector's attention moves over time (colour words and layout "
    "phrases peak at high noise, style words rise at low noise; paper, Fig. 8), and the paper's ablation "
    "(section 5.3) finds its timestep-aware design better than connectors without the timestep."
)
LOOK_FOR = (
    "Same seed, same noise: only the timestep the connector is told changes. Told one timestep throughout, it "
    "gives the UNet the same tokens at every step, those it makes for that timestep. In the pocket world the bars "
    "count how often each variant draws what the prompt asks."
)
KINDS = ("colour", "colour and shape")


def images(options: LessonOptions) -> int:
    """How many generations the lesson runs: one per (variant, seed), the ELLA side only."""
    return len(VARIANTS) * options.seeds


def lesson(runner: LessonRunner, options: LessonOptions) -> LessonResult:
    """The ELLA side per seed with the real timesteps and each fixed one; (pocket) how often each draws the asked."""
    prompt = options.prompt or runner.examples(EXAMPLES)[0]
    fixed = dict(zip(VARIANTS, (None, *FIXED_TIMESTEPS), strict=True))
    pictures = {
        variant: [
            runner.generate(prompt, seed, sides="ella", connector_timestep=timestep).ella_images[0]
            for seed in runner.seeds
        ]
        for variant, timestep in fixed.items()
    }
    shown = list(runner.seeds)[:2]
    grid = [[pictures[variant][index] for variant in VARIANTS] for index in range(len(shown))]
    figures = {
        "pictures": to_image(
            image_grid_figure(
                grid,
                [f"seed {seed}" for seed in shown],
                [f"connector: {variant}" for variant in VARIANTS],
                f"ELLA side only: {prompt}",
            )
        )
    }
    numbers = {"prompt": prompt, "fixed_timesteps": list(FIXED_TIMESTEPS), "seeds": list(runner.seeds)}
    wanted = requested_objects(prompt)
    if not runner.measured or not wanted:
        note = PAPER if not runner.measured else "The detector checks objects named as a colour before a shape."
        return LessonResult(
            NAME, TITLE, LOOK_FOR, Evidence("cited" if not runner.measured else "measured", note), numbers, figures
        )
    numbers["asked"] = [list(pair) for pair in wanted]
    measured = {variant: drawn_as_asked(images_, wanted) for variant, images_ in pictures.items()}
    numbers["drawn_as_asked"] = measured
    by_kind = {kind: {variant: values[kind] for variant, values in measured.items()} for kind in KINDS}
    figures["drawn_as_asked"] = to_image(
        category_bars_figure(percentages(by_kind), "ELLA pictures showing what was asked (%)")
    )
    text = ", ".join(
        f"{variant} {values['colour and shape']['hits']} of {values['colour and shape']['of']}"
        for variant, values in measured.items()
    )
    evidence = Evidence(
        "measured", f"Measured by the pocket detector, pictures with every asked colour-shape pair: {text}."
    )
    return LessonResult(NAME, TITLE, LOOK_FOR, evidence, numbers, figures)
