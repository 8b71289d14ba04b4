"""Checks of the paths a command will write to, made before any model loads or any work starts."""

from __future__ import annotations

import os
from pathlib import Path

from ella_demo.core.errors import InputError


def check_out_folder(folder: Path, flag: str = "--out") -> None:
    """Refuse, before any model loads, an output folder that is a file or cannot be made or written."""
    if folder.exists() and not folder.is_dir():
        raise InputError(flag, f"{folder} is a file: give a folder (it is made if missing).")
    _check_writable(folder, flag)


def check_out_file(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output file that is a folder or whose folder cannot be made or written."""
    if path.is_dir():
        raise InputError(flag, f"{path} is a folder: give a file name.")
    _check_writable(path.parent, flag)


def _check_writable(folder: Path, flag: str) -> None:
    """The folder, or the nearest of its parents that exists, must be a folder this user may write in."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(flag, f"cannot make the folder {folder}: {existing} is a file.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(flag, f"cannot write in {existing}: choose a folder you may write to.")
