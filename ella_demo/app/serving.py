"""Serving one app instance: its limits, the runs in progress, the export folders, memory, and launch."""

from __future__ import annotations

import ctypes
import functools
import itertools
import shutil
import sys
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

MODEL_WORK = "model-work"  # the one concurrency group of every handler that runs a model
VIEW_CONCURRENCY = 4  # re-rendering from a cached trace: no model work, never queued behind it
M_ARENA_MAX = -8  # glibc's mallopt parameter for the number of malloc arenas
SESSION_TTL_S = 3600  # a session's last run (or lesson) is dropped an hour after its last use
EXPORTS_KEPT = 16  # GIF/zip folders kept on disk; Gradio has copied older ones to its cache


@dataclass(frozen=True)
class ServingLimits:
    """What one app instance allows, so a busy or hostile public Space stays bounded.

    concurrency: model runs at once (one GPU job by default). max_pixel_steps: the traced work one
    generation may ask for, width x height x steps x images (default: 512x512, 50 steps, 4 images).
    max_queue: requests waiting at most. max_sessions: browser sessions whose traces are kept
    (least recently used ones are dropped beyond it). max_file_size: largest upload Gradio accepts.
    """

    concurrency: int = 1
    max_pixel_steps: int = 512 * 512 * 50 * 4
    max_queue: int = 32
    max_sessions: int = 32
    max_file_size: str = "5mb"


def model_work(limits: ServingLimits) -> dict:
    """Event options for a handler that runs a model: the one shared queue, `limits.concurrency` at a time."""
    return {"concurrency_id": MODEL_WORK, "concurrency_limit": limits.concurrency}


class RunRegistry:
    """The runs in progress, per browser session, so Stop (or a closed page) can end them between steps.

    A run is known by an integer token, which is all the GPU handler receives: on ZeroGPU its
    arguments are pickled into a worker process, and a token pickles where a lock or event does not.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._sessions: dict[int, str] = {}  # running token -> its session
        self._stopped: set[int] = set()

    @contextmanager
    def running(self, session: str) -> Iterator[int]:
        """A token for one run of `session`, forgotten when the run ends."""
        with self._lock:
            token = next(self._tokens)
            self._sessions[token] = session
        try:
            yield token
        finally:
            with self._lock:
                self._sessions.pop(token, None)
                self._stopped.discard(token)

    def stop(self, session: str) -> None:
        """Ask every run of `session` to stop after its current step."""
        with self._lock:
            self._stopped.update(token for token, owner in self._sessions.items() if owner == session)

    def is_stopped(self, token: int) -> bool:
        with self._lock:
            return token in self._stopped


class ExportFolders:
    """Temporary folders for GIF and zip downloads; only the newest `kept` stay on disk.

    Gradio copies a returned file into its own cache before the next request can reach here, so
    older folders are no longer needed; `close` removes the rest when the app stops.
    """

    def __init__(self, kept: int = EXPORTS_KEPT):
        self._root = Path(tempfile.mkdtemp(prefix="ella_explorer_exports_"))
        self._folders: deque[Path] = deque()
        self._kept = kept
        self._lock = threading.Lock()

    def new(self) -> Path:
        folder = Path(tempfile.mkdtemp(dir=self._root))
        with self._lock:
            self._folders.append(folder)
            while len(self._folders) > self._kept:
                shutil.rmtree(self._folders.popleft(), ignore_errors=True)
        return folder

    def count(self) -> int:
        return sum(1 for _ in self._root.iterdir()) if self._root.exists() else 0

    def close(self) -> None:
        shutil.rmtree(self._root, ignore_errors=True)


@functools.cache
def _glibc():
    """The C library where it is glibc (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas so the server's memory plateaus; False where there is no glibc.

    glibc gives each thread its own arena (up to 8 per core), and Gradio serves requests from a pool
    of worker threads: freed trace buffers stay scattered over many arenas and RSS creeps up with
    every session (README, "Serving memory").
    """
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, arenas))


def release_freed_memory() -> None:
    """Hand memory freed by dropped traces back to the system (glibc keeps it otherwise)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def launch_app(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    limits: ServingLimits = ServingLimits(),
    **options,
):
    """Serve the app. Binds to this machine only and opens no share link unless told otherwise."""
    limit_malloc_arenas()
    return app.launch(
        server_name=host,
        server_port=port,
        share=share,
        ssr_mode=False,
        max_file_size=limits.max_file_size,
        state_session_capacity=limits.max_sessions,
        **options,
    )
