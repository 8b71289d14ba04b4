"""Finding model files: a local path as given, or a hub repository through the local cache, then the hub.

Every source goes through the same steps: resolve it to a local folder or file, check that the
files we need are there, then load them strictly. A test that saves models in the hub layout and
loads them back walks exactly the code path a user's download takes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

from huggingface_hub import snapshot_download

from ella_demo.core.errors import ExplorerError
from ella_demo.loading.sources import HubLocation

# A file a folder must hold, or a tuple of files of which it must hold at least one.
Requirement = str | tuple[str, ...]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w./-]+)?$")


class ModelSourceError(ExplorerError, RuntimeError):
    """A model could not be found, fetched, or loaded; the message says what to do instead."""


class MissingFilesError(ModelSourceError):
    """Files of a hub repository are neither cached locally nor downloadable."""

    def __init__(self, what: str, location: HubLocation, patterns: list[str], detail: str):
        self.summary = f"the {what} from {location.repo_id} (files {', '.join(patterns)})"
        self.detail = detail
        super().__init__(f"Could not get {self.summary}. {OFFLINE_ADVICE}\nDetails: {detail}")


OFFLINE_ADVICE = (
    "They are neither in the local hub cache nor downloadable right now. Either connect to the hub "
    "once so the files are cached, point at local copies (--sd15 / --ella / --t5 PATH, or the sd15=, "
    "ella=, t5= arguments of load_models), or run without downloads: --preset pocket (a small world "
    "of shapes whose models this project trained, shipped in the package)."
)


def parse_source(spec: str | Path) -> Path | HubLocation:
    """A local path if it exists, else a hub location ("org/name[/path/in/repo]").

    Raises:
        ModelSourceError: neither an existing path nor something shaped like a hub id.
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    text = str(spec)
    if HUB_ID.match(text) and not text.startswith(("/", ".", "~")):
        repo_owner, repo_name, *rest = text.split("/")
        return HubLocation(f"{repo_owner}/{repo_name}", "/".join(rest))
    raise ModelSourceError(f"{text!r} is neither an existing local path nor a hub id like 'org/name'.")


def fetch(
    location: HubLocation,
    patterns: list[str],
    what: str,
    cache_dir: str | Path | None = None,
    lacks: Callable[[Path], list[str]] | None = None,
) -> Path:
    """Local copy of the folder `location.path` of `location`'s repo, holding the files matching `patterns`.

    `patterns` and `lacks` are relative to that folder (the repository root when the path is "").
    Tries the local hub cache first (no network), then the hub. A copy counts only if
    `lacks(folder)` names nothing missing (default: any copy counts), so a partly cached
    download (configs without weights, fp32 weights when fp16 ones are wanted) is completed from
    the hub rather than taken. Fails fast with a message naming the files when neither place has them.
    """
    prefix = f"{location.path}/" if location.path else ""
    patterns = [prefix + pattern for pattern in patterns]
    errors = []
    for local_only in (True, False):
        place = "the local hub cache" if local_only else "the hub"
        try:
            repository = Path(
                snapshot_download(
                    location.repo_id,
                    allow_patterns=patterns,
                    cache_dir=cache_dir,
                    local_files_only=local_only,
                    etag_timeout=5,
                )
            )
        except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean "not here"
            errors.append(f"{place}: {type(error).__name__}: {str(error)[:300]}")
            continue
        folder = repository / location.path
        missing = lacks(folder) if lacks else []
        if not missing:
            return folder
        errors.append(f"{place}: the copy in {folder} lacks {', '.join(missing)}")
    raise MissingFilesError(what, location, patterns, "; ".join(errors))


def missing_files(folder: Path, required: Iterable[Requirement]) -> list[str]:
    """The entries of `required` that `folder` lacks (a tuple: none of its alternatives is there)."""
    missing = []
    for requirement in required:
        alternatives = (requirement,) if isinstance(requirement, str) else requirement
        if not any((folder / name).is_file() for name in alternatives):
            missing.append(" or ".join(alternatives))
    return missing


def require_files(folder: Path, required: Iterable[Requirement], what: str) -> None:
    missing = missing_files(folder, required)
    if missing:
        raise ModelSourceError(f"The {what} folder {folder} lacks {', '.join(missing)}.")
