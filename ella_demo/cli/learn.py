"""The `learn` command: run a lesson and write its handout (figures, numbers, a Markdown page)."""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm.auto import tqdm

from ella_demo.cli.arguments import add_model_arguments, load_from_args
from ella_demo.cli.output_paths import check_out_folder
from ella_demo.learn import LESSONS, LessonOptions, run_lesson
from ella_demo.learn.handout import write_handout

LEARN_FLAGS = {
    "lesson": "NAME",
    "seed": "--seed",
    "seeds": "--seeds",
    "steps": "--steps",
    "prompt": "--prompt",
    "second prompt": "--second-prompt",
    "prompt_after": "--second-prompt",
    "guidance_scale": "--guidance",
    "num_inference_steps": "--steps",
}
DEFAULT_OUT = Path("lessons")


def add_learn_parser(commands: argparse._SubParsersAction) -> None:
    """`learn NAME`: the lesson, its prompts and seeds, and where its handout goes."""
    lessons = "; ".join(f"{name}: {lesson.summary}" for name, lesson in LESSONS.items())
    parser = commands.add_parser(
        "learn",
        help="run a lesson of the Learn tab and write its figures, numbers and page",
        description=f"Lessons: {lessons}",
    )
    parser.add_argument("lesson", choices=[*LESSONS, "all"], metavar="NAME", help=f"{', '.join(LESSONS)} or all")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="handouts go to OUT/NAME (default lessons)")
    parser.add_argument("--prompt", help="default: the lesson's example for the preset")
    parser.add_argument("--second-prompt", help="the twin (bag_of_words) or the prompt switched to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=4, help="seeds each measurement averages over (1-8)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, help="default: the preset's")
    add_model_arguments(parser, default_preset="pocket")


def run_learn(args: argparse.Namespace) -> int:
    """Run the lesson (or every lesson) and print where each handout went."""
    check_out_folder(args.out)
    options = LessonOptions(args.prompt, args.second_prompt, args.seed, args.seeds, args.steps, args.guidance)
    options.checked()
    models = load_from_args(args)
    for name in LESSONS if args.lesson == "all" else [args.lesson]:
        with tqdm(desc=name, unit="image") as bar:

            def advance(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.update(done - bar.n)

            result = run_lesson(models, name, options, advance)
        paths = write_handout(result, args.out / name)
        print(f"{result.title}\n  {result.evidence.text}\n  {len(paths)} files in {args.out / name}")
    return 0
