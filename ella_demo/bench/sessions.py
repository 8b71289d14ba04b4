"""Benchmark: the app's resident memory (RSS) while many browser sessions come and go.

The app runs in a child process, as a user would run it; this process plays the visitors: each
session is a new gradio_client that generates one traced run (which the app keeps in the
session's state) and leaves. The RSS of the serving process is read from /proc after every
`every` sessions, so the numbers show whether memory plateaus once `max_sessions` sessions are
kept (Linux only: /proc).
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from dataclasses import asdict
from pathlib import Path

from ella_demo.app import ServingLimits

PROMPT = "a red cat number {index} sitting on a blue chair next to a green lamp"


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def _serve(preset: str, port: int, limits: ServingLimits) -> None:
    """The app as `app.py` serves it (runs in the child process)."""
    from ella_demo.app import build_app, launch_app
    from ella_demo.loading.models import load_models

    launch_app(build_app(load_models(preset, device="cpu"), limits=limits), port=port, limits=limits, quiet=True)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, seconds: float = 180) -> None:
    from gradio_client import Client

    deadline = time.monotonic() + seconds
    while True:
        try:
            Client(url, verbose=False).close()
            return
        except Exception:  # any failure here means "not up yet"
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def session_memory(
    preset: str = "tiny",
    sessions: int = 100,
    every: int = 10,
    size: int = 256,
    steps: int = 10,
    limits: ServingLimits = ServingLimits(),  # noqa: B008 - frozen dataclass, safe as a default
) -> dict:
    """RSS of a serving app after each `every` sessions of one traced generation each.

    Returns {"rss_mb": [[sessions so far, MiB], ...], "seconds": wall time, "settings": ...}.
    """
    from gradio_client import Client

    port = _free_port()
    server = multiprocessing.get_context("spawn").Process(target=_serve, args=(preset, port, limits), daemon=True)
    server.start()
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url)
        samples = [[0, rss_mb(server.pid)]]
        started = time.monotonic()
        for index in range(1, sessions + 1):
            client = Client(url, verbose=False)
            client.predict(
                prompt=PROMPT.format(index=index), seed=index, steps=steps, width=size, height=size,
                api_name="/generate",
            )  # fmt: skip
            client.close()
            if index % every == 0:
                samples.append([index, rss_mb(server.pid)])
        seconds = time.monotonic() - started
    finally:
        server.terminate()
        server.join(30)
    settings = {"preset": preset, "sessions": sessions, "size": size, "steps": steps, "limits": asdict(limits)}
    return {"rss_mb": samples, "seconds": seconds, "settings": settings}


def format_session_memory(report: dict) -> str:
    """A plain-text table: sessions so far, RSS, and the change since the previous row."""
    lines = [f"App RSS over browser sessions; settings {report['settings']}", "", "sessions   RSS MiB   change"]
    previous = None
    for count, megabytes in report["rss_mb"]:
        change = "" if previous is None else f"{megabytes - previous:+8.1f}"
        lines.append(f"{count:8d}  {megabytes:8.1f}  {change}")
        previous = megabytes
    lines.append(f"\n{report['settings']['sessions']} sessions in {report['seconds']:.0f} s")
    return "\n".join(lines)
