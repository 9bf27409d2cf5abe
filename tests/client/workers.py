"""Worker processes for the crash tests: start a script with arguments, SIGKILL it at a moment
of the test's choosing, or wait for it to end by itself, cleanly.

:class:`Crowd` starts them (each with its own stderr file, no ``LIAISON_*`` variable of the
developer's shell) and SIGKILLs whatever still runs when the test ends (the ``crowd``
fixtures of ``test_crash_safety.py`` and ``tests/reliability/test_crash.py``).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

__all__ = ["Crowd", "Worker", "journal_lines"]


@dataclass
class Worker:
    """One worker process."""

    name: str
    proc: subprocess.Popen[bytes]
    stderr: Path
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    killed: bool = False

    def wait_ready(self, timeout: float) -> float | None:
        """When the worker printed ``ready`` (``None`` if it ended first); needs a worker
        started with ``pipe_stdout``."""
        if self.ready_at is not None:
            return self.ready_at
        out = self.proc.stdout
        assert out is not None, "started without pipe_stdout"
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([out], [], [], remaining)
            if not readable:
                break
            line = out.readline()
            if not line:
                return None  # it exited
            if line.strip() == b"ready":
                self.ready_at = time.monotonic()
                return self.ready_at
        raise AssertionError(f"{self.name} was not ready after {timeout} s:\n{self.errors()}")

    def kill(self) -> bool:
        """SIGKILL; whether the process was still running."""
        alive = self.proc.poll() is None
        if alive:
            self.proc.send_signal(signal.SIGKILL)
            self.killed = True
        self.proc.wait()
        return alive

    def finish(self, timeout: float) -> None:
        """Wait for a process that is not killed: it must end by itself, cleanly."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} hung for {timeout} s:\n{self.errors()}") from None
        assert code == 0, f"{self.name} exited with {code}:\n{self.errors()}"
        assert "Traceback" not in self.errors(), self.errors()

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")


class Crowd:
    """Starts ``script`` workers and SIGKILLs whatever is still running at the end."""

    def __init__(self, root: Path, script: Path) -> None:
        self.root = root
        self.script = script
        self.workers: list[Worker] = []

    def start(self, name: str, *args: str, pipe_stdout: bool = False) -> Worker:
        stderr = self.root / f"{len(self.workers):03d}-{name}.stderr"
        with stderr.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(self.script), *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe_stdout else subprocess.DEVNULL,
                stderr=sink,
                env={k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")},
            )
        worker = Worker(name, proc, stderr)
        self.workers.append(worker)
        return worker

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
            if worker.proc.stdout is not None:
                worker.proc.stdout.close()


def journal_lines(path: Path) -> list[list[str]]:
    """A worker's journal (one fsync'd line per event), each line split into at most four
    fields; empty if the worker never wrote one."""
    if not path.exists():
        return []
    return [line.split(" ", 3) for line in path.read_text(encoding="utf-8").splitlines()]
