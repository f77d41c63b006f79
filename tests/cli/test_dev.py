"""``ctrelay dev`` end to end: no Redis at the configured URL, a real Segment client sends, the sandbox
receives, SIGINT stops the whole process tree (checked pid by pid), and the unit parts of the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from worker.cli.dev import DEV_ACCOUNT, curl_line, destinations_toml
from worker.cli.embedded import free_port
from worker.cli.processes import CLI, Child, Supervisor, port_is_free, stop
from worker.core.destinations import load_destinations

# ---------------------------------------------------------------- process tree by pid (via /proc)


def stat_of(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a live process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below ``root``: pid → start time (to tell a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := stat_of(int(entry.name))) is not None:
            children.setdefault(info[1], []).append(int(entry.name))
            starts[int(entry.name)] = info[2]
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in starts:
            found[pid] = starts[pid]
        todo += children.get(pid, [])
    return found


def still_running(snapshot: dict[int, int]) -> list[int]:
    alive = []
    for pid, start in snapshot.items():
        info = stat_of(pid)
        if info is not None and info[2] == start and info[0] != "Z":
            alive.append(pid)
    return alive


# ---------------------------------------------------------------- unit: supervisor and generated files


def test_generated_destination_points_at_the_sandbox(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(destinations_toml("wk_dev", DEV_ACCOUNT, "s3cret", "http://127.0.0.1:8900"))
    (destination,) = load_destinations(path, env={}).values()
    assert destination.write_key == "wk_dev"
    assert destination.base_url == "http://127.0.0.1:8900"
    assert destination.passcode is not None
    assert destination.passcode.get_secret_value() == "s3cret"


def test_generated_destination_escapes_what_it_is_given(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text(destinations_toml('wk "odd" \\ key', DEV_ACCOUNT, "p", "http://127.0.0.1:1"))
    (destination,) = load_destinations(path, env={}).values()
    assert destination.write_key == 'wk "odd" \\ key'


def test_curl_line_sends_a_track_call_with_the_write_key() -> None:
    line = curl_line("http://127.0.0.1:8000", "wk_dev")
    assert line.startswith("curl ")
    assert "-u wk_dev:" in line
    assert line.endswith("http://127.0.0.1:8000/v1/track")


def test_dev_keeps_away_from_a_shared_redis_keys_unless_told() -> None:
    from worker.cli.dev import DEV_PREFIX, key_prefix
    from worker.core.settings import Settings

    assert key_prefix(Settings(), "configured") == DEV_PREFIX  # a Redis that answers may hold a real relay
    assert key_prefix(Settings(), "redis-server") == Settings().redis_prefix  # our own embedded Redis
    assert key_prefix(Settings(redis_prefix="mine"), "configured") == "mine"  # said explicitly


def test_choose_port_takes_the_asked_port_when_free_else_any() -> None:
    import socket

    from worker.cli.dev import choose_port

    free = free_port()
    assert choose_port(free) == free
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        other = choose_port(taken)
        assert other != taken
        assert port_is_free(other)
    assert choose_port(0) > 0


def test_port_is_free_sees_a_listener() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert not port_is_free(sock.getsockname()[1])
    assert port_is_free(free_port())


def test_stop_kills_a_child_that_ignores_sigterm_and_its_group(tmp_path: Path) -> None:
    """A child that ignores SIGTERM, with a grandchild in its group: both are gone after stop()."""
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(env=dict(os.environ), cwd=tmp_path)
    process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE)
    child = Child("stubborn", process)
    supervisor.children.append(child)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    tree = descendants(process.pid)
    assert len(tree) == 1
    info = stat_of(process.pid)
    assert info is not None
    tree[process.pid] = info[2]
    code = stop(child, timeout_s=0.5)
    assert code == -signal.SIGKILL
    deadline = time.monotonic() + 10
    while still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert still_running(tree) == []
    process.stdout.close()


def test_supervisor_reports_a_child_that_exits(tmp_path: Path) -> None:
    supervisor = Supervisor(env=dict(os.environ), cwd=tmp_path)
    child = supervisor.start("nothing", ["no-such-command"])
    child.process.wait(timeout=30)
    with pytest.raises(RuntimeError, match="nothing"):
        supervisor.raise_if_exited()
    supervisor.stop_all(timeout_s=1)


# ---------------------------------------------------------------- end to end


@pytest.fixture(params=["redis-server", "fakeredis"])
def dev_process(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int], Path]]:
    """``ctrelay dev`` with no Redis at REDIS_URL (a closed port), on free ports; killed if the test fails.

    Embedded Redis: the ``redis-server`` binary, or (``--no-redis-server``, as on a machine with only
    Python) the in-process fakeredis."""
    ports = {"ingest": free_port(), "sandbox": free_port(), "metrics": free_port()}
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            "CTRELAY_REDIS_PREFIX": f"test-dev-{uuid.uuid4().hex[:8]}",
            "CTRELAY_LOG_FORMAT": "json",
            "CTRELAY_PARTITIONS": "4",
        }
    )
    args = ["dev", "--port", str(ports["ingest"]), "--sandbox-port", str(ports["sandbox"])]
    args += ["--metrics-port", str(ports["metrics"])]
    if request.param == "fakeredis":
        args.append("--no-redis-server")
    ports["embedded"] = 1 if request.param == "redis-server" and shutil.which("redis-server") else 0
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process, ports, log
    finally:
        kill_tree(process)


def kill_tree(process: subprocess.Popen[bytes]) -> None:
    """After a failed test: SIGKILL ``ctrelay dev`` and every process group below it (children have their own)."""
    if process.poll() is None:
        tree = descendants(process.pid)
        for pgid in [process.pid, *tree]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_for_banner(process: subprocess.Popen[bytes], log: Path, deadline_s: float = 90.0) -> str:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        text = log.read_text(errors="replace")
        if "ctrelay dev is running" in text:
            return text
        assert process.poll() is None, f"ctrelay dev exited early:\n{text[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"ctrelay dev did not start:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.mark.e2e
def test_dev_embeds_redis_delivers_to_the_sandbox_and_stops_on_sigint(
    dev_process: tuple[subprocess.Popen[bytes], dict[str, int], Path],
) -> None:
    from segment.analytics import Client

    process, ports, log = dev_process
    banner = wait_for_banner(process, log)
    ingest = f"http://127.0.0.1:{ports['ingest']}"
    sandbox = f"http://127.0.0.1:{ports['sandbox']}"
    kind = "redis-server" if ports["embedded"] else "fakeredis"
    assert f"({kind}," in banner, "REDIS_URL does not answer: Redis must be embedded"
    assert curl_line(ingest, "wk_dev") in banner
    assert f"{sandbox}/_sandbox/records" in banner

    tree = descendants(process.pid)
    expected_children = 3 + ports["embedded"]  # sandbox, worker, ingest (+ redis-server; fakeredis is a thread)
    assert len(tree) >= expected_children, f"expected Redis, sandbox, worker and ingest below ctrelay dev, got {tree}"

    errors: list[object] = []
    client = Client(write_key="wk_dev", host=ingest, sync_mode=True, on_error=lambda e, batch: errors.append(e))
    user = f"user-{uuid.uuid4().hex[:8]}"
    client.identify(user, {"email": "ada@example.com", "plan": "pro"})
    events = [f"Dev Event {n}" for n in range(5)]
    for name in events:
        client.track(user, name, {"n": 1})
    client.flush()  # sync_mode: every call was sent before returning; flush is a no-op check
    assert errors == []

    expected = {("profile", None), *(("event", name) for name in events)}
    found: set[tuple[str, str | None]] = set()
    end = time.monotonic() + 60
    with httpx.Client(timeout=5) as http:
        while time.monotonic() < end and not expected <= found:
            records = http.get(f"{sandbox}/_sandbox/records").json()["records"]
            found = {
                (r["record"]["type"], r["record"].get("evtName"))
                for r in records
                if r["account_id"] == DEV_ACCOUNT and r["record"].get("identity") == user
            }
            time.sleep(0.2)
    assert expected <= found, f"the sandbox got {found}"

    tree = descendants(process.pid)  # again: everything started by now
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=90) == 0, log.read_text(errors="replace")[-3000:]
    deadline = time.monotonic() + 10
    while still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_running(tree) == [], f"left behind: {still_running(tree)}"


@pytest.mark.e2e
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_dev_stops_everything_on_sigterm_and_on_a_closed_terminal(tmp_path: Path, signum: int) -> None:
    ports = [free_port() for _ in range(3)]
    env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", CTRELAY_PARTITIONS="2")
    env["CTRELAY_LOG_FORMAT"] = "json"
    args = ["dev", "--no-redis-server", "--port", str(ports[0]), "--sandbox-port", str(ports[1])]
    args += ["--metrics-port", str(ports[2])]
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for_banner(process, log)
        tree = descendants(process.pid)
        assert len(tree) >= 3
        process.send_signal(signum)
        assert process.wait(timeout=90) == 0, log.read_text(errors="replace")[-3000:]
        deadline = time.monotonic() + 10
        while still_running(tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_running(tree) == []
    finally:
        kill_tree(process)
