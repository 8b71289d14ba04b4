"""Command line: `python -m ella_demo {generate,probe,dpg,bench,train,pocket,learn} ...`.

arguments.py holds what every command (and app.py) shares; each command lives in its own module.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ella_demo.cli.arguments import DPG_FLAGS, FLAGS, USER_ERRORS, describe_error
from ella_demo.cli.bench import add_bench_parser, run_bench
from ella_demo.cli.dpg import add_dpg_parser, run_dpg
from ella_demo.cli.learn import LEARN_FLAGS, add_learn_parser, run_learn
from ella_demo.cli.pocket import POCKET_FLAGS, add_pocket_parser, run_pocket
from ella_demo.cli.prompt import add_generate_parser, add_probe_parser, run_generate, run_probe
from ella_demo.cli.train import TRAIN_FLAGS, add_train_parser, run_train


def build_parser() -> argparse.ArgumentParser:
    """The parser of every sub-command."""
    parser = argparse.ArgumentParser(prog="python -m ella_demo", description="ELLA Explorer command line")
    commands = parser.add_subparsers(dest="command", required=True)
    add_generate_parser(commands)
    add_probe_parser(commands)
    add_dpg_parser(commands)
    add_bench_parser(commands)
    add_train_parser(commands)
    add_pocket_parser(commands)
    add_learn_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error is printed as `error: ...` with exit status 2."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["python", "-m", "ella_demo", *argv])  # for training records
    handlers = {"generate": run_generate, "probe": run_probe, "dpg": run_dpg, "bench": run_bench, "train": run_train,
                "pocket": run_pocket, "learn": run_learn}  # fmt: skip
    handler = handlers[args.command]
    try:
        return handler(args)
    except USER_ERRORS as error:
        flags = {"dpg": DPG_FLAGS, "train": TRAIN_FLAGS, "pocket": {**FLAGS, **POCKET_FLAGS},
                 "learn": {**FLAGS, **LEARN_FLAGS}}.get(args.command, FLAGS)  # fmt: skip
        print(f"error: {describe_error(error, flags)}", file=sys.stderr)
        return 2
