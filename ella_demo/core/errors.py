"""The errors a user can fix. Adapters (app, CLI) show their messages; anything else is a bug.

Every error here says what to change. The app and the CLI catch `ExplorerError` and show its
message; any other exception is an internal error: logged with its traceback, and shown as a
short generic message rather than dressed up as the user's fault.
"""

from __future__ import annotations

from collections.abc import Mapping


class ExplorerError(Exception):
    """Base class of the project's user-facing errors."""


class InputError(ExplorerError, ValueError):
    """A value given by the user (argument, flag, UI control) is unusable.

    `field` names the value in the Python API ("num_inference_steps"); `detail` says what is wrong
    ("must be a whole number from 1 to 150, got 2.5"). Adapters show the field under their own name
    (`--steps` in the CLI, "Steps" in the app) through `named`.
    """

    def __init__(self, field: str, detail: str):
        self.field = field
        self.detail = detail
        super().__init__(f"{field} {detail}")

    def named(self, names: Mapping[str, str]) -> str:
        """The message with the field shown under the adapter's name for it, if it has one."""
        return f"{names.get(self.field, self.field)} {self.detail}"


class GenerationCancelledError(ExplorerError):
    """A run was stopped between steps (Stop pressed, or the client went away)."""

    def __init__(self, step: int, total: int):
        self.step = step
        self.total = total
        super().__init__(f"Stopped after step {step} of {total}.")
