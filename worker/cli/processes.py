"""Child processes of ``ctrelay dev``: start each ``ctrelay`` role in its own process group, watch, restart, stop.

Stopping a child: SIGTERM to the child itself (never to its whole group first: Celery's pool
processes must not be killed under a running task; the parent shuts them down warm), a bounded wait,
then SIGKILL to whatever is left of the child's process group, so that no process outlives the
supervisor.

Output: each child's stdout and stderr go through a pipe to the supervisor's stdout, line by line. While the
supervisor *holds* output (from the start until :meth:`Supervisor.release`: ``ctrelay dev`` releases it after its
banner, or before its error message when the start fails), the lines are kept and then written in order, so
that nothing a child prints while starting (Celery's warnings among them) comes before the banner.

Restarts: once running, a child that exits on its own is started again with the same arguments
(:meth:`Supervisor.restart_exited`), at most ``MAX_RESTARTS`` times within ``RESTART_WINDOW_S``; more is a
crash loop, and :class:`ChildExited` stops the tree. Also the loopback port helpers the supervisor needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CLI = "from worker.cli import app; app(prog_name='ctrelay')"
"""How a child runs ``ctrelay``: this interpreter, this package, whatever the PATH holds."""


MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind ``host:port`` now, as the servers bind it (``SO_REUSEADDR``: a port
    whose last connections are in TIME_WAIT is free; one with a listener is not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class ChildExited(RuntimeError):
    """A supervised child stopped on its own: the process tree is no longer whole."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    args: list[str] = field(default_factory=list)
    restarts: list[float] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


class Output:
    """Where the children's lines go: ``sink``, or held in order until :meth:`release`."""

    def __init__(self, sink: IO[bytes] | None = None) -> None:
        self.sink = sink
        self.lock = threading.Lock()
        self.held: list[bytes] | None = []

    def write(self, line: bytes) -> None:
        with self.lock:
            if self.held is not None:
                self.held.append(line)
                return
            self._write(line)

    def release(self) -> None:
        with self.lock:
            held, self.held = self.held or [], None
            for line in held:
                self._write(line)

    def _write(self, line: bytes) -> None:
        sink = self.sink if self.sink is not None else sys.stdout.buffer
        with contextlib.suppress(OSError, ValueError):  # our own stdout closed: the child's line is dropped
            sink.write(line)
            sink.flush()


def _pump(pipe: IO[bytes], output: Output) -> None:
    with pipe:
        for line in iter(pipe.readline, b""):
            output.write(line)


@dataclass
class Supervisor:
    """The children of one ``ctrelay dev``, in start order."""

    env: Mapping[str, str]
    cwd: Path
    children: list[Child] = field(default_factory=list)
    output: Output = field(default_factory=Output)

    def start(self, name: str, args: list[str]) -> Child:
        """Run ``ctrelay <args>`` in a new session (its own process group), output through ours."""
        child = Child(name=name, process=self._spawn(args), args=list(args))
        child.pump = self._pump(child.process)
        self.children.append(child)
        return child

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", CLI, *args],
            env=dict(self.env),
            cwd=self.cwd,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def _pump(self, process: subprocess.Popen[bytes]) -> threading.Thread:
        assert process.stdout is not None
        thread = threading.Thread(target=_pump, args=(process.stdout, self.output), name="dev-output", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Write what the children printed so far, and from now on as they print it."""
        self.output.release()

    def raise_if_exited(self) -> None:
        """Raise :class:`ChildExited` naming the first child that is no longer running."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ChildExited(f"{child.name} (pid {child.pid}) exited with code {code}")

    def restart_exited(self, now: float | None = None) -> list[str]:
        """Start again every child that exited on its own; what happened, one line each. Raise
        :class:`ChildExited` for a child that exited more than ``MAX_RESTARTS`` times in ``RESTART_WINDOW_S``."""
        now = time.monotonic() if now is None else now
        said = []
        for child in self.children:
            code = child.process.poll()
            if code is None:
                continue
            kill_group(child.pid)  # whatever it left behind (a pool process) goes with it
            if child.pump is not None:
                child.pump.join(timeout=5)
            child.restarts = [at for at in child.restarts if now - at < RESTART_WINDOW_S] + [now]
            if len(child.restarts) > MAX_RESTARTS:
                raise ChildExited(
                    f"{child.name} exited with code {code} {len(child.restarts)} times within "
                    f"{RESTART_WINDOW_S:.0f}s; not restarting it"
                )
            old = child.pid
            child.process = self._spawn(child.args)
            child.pump = self._pump(child.process)
            said.append(f"{child.name} (pid {old}) exited with code {code}; restarted it (pid {child.pid})")
        return said

    def stop_all(self, timeout_s: float) -> None:
        """Stop every child, the last started first; each gets ``timeout_s`` to exit on SIGTERM."""
        for child in reversed(self.children):
            stop(child, timeout_s)
            if child.pump is not None:
                child.pump.join(timeout=5)  # its last lines are written before the next child stops
        self.release()


def stop(child: Child, timeout_s: float) -> int:
    """SIGTERM the child, wait up to ``timeout_s``, SIGKILL its process group's stragglers; its exit code."""
    process = child.process
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"ctrelay dev: {child.name} did not stop within {timeout_s:.0f}s; killing it", file=sys.stderr)
            kill_group(child.pid)
            process.wait(timeout=10)
    kill_group(child.pid)
    return int(process.returncode)


def kill_group(pgid: int) -> None:
    """SIGKILL every process left in a process group (a child's group id is its pid)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
