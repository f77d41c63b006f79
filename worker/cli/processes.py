"""Child processes of ``ctrelay dev``: start each ``ctrelay`` role in its own process group, watch, stop.

Stopping a child: SIGTERM to the child itself (never to its whole group first: Celery's pool
processes must not be killed under a running task; the parent shuts them down warm), a bounded wait,
then SIGKILL to whatever is left of the child's process group, so that no process outlives the
supervisor. Also the loopback port helpers the supervisor needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLI = "from worker.cli import app; app(prog_name='ctrelay')"
"""How a child runs ``ctrelay``: this interpreter, this package, whatever the PATH holds."""


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
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

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Supervisor:
    """The children of one ``ctrelay dev``, in start order."""

    env: Mapping[str, str]
    cwd: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> Child:
        """Run ``ctrelay <args>`` in a new session (its own process group), output to ours."""
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, *args], env=dict(self.env), cwd=self.cwd, start_new_session=True
        )
        child = Child(name=name, process=process)
        self.children.append(child)
        return child

    def raise_if_exited(self) -> None:
        """Raise :class:`ChildExited` naming the first child that is no longer running."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ChildExited(f"{child.name} (pid {child.pid}) exited with code {code}")

    def stop_all(self, timeout_s: float) -> None:
        """Stop every child, the last started first; each gets ``timeout_s`` to exit on SIGTERM."""
        for child in reversed(self.children):
            stop(child, timeout_s)


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
