"""``ctrelay dev`` end to end: no Redis at the configured URL, a real Segment client sends, the sandbox
receives, a destinations file of "real" accounts (a second sandbox standing in for CleverTap) is delivered to as
well, every command the banner prints runs as printed, a worker that dies is restarted, and a real Ctrl-C (SIGINT
to the process group, as a terminal sends it) stops the whole process tree (checked pid by pid) with no traceback
and no ERROR line; and the unit parts of the supervisor.
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from worker.cli.banner import curl_line
from worker.cli.dev import DEV_ACCOUNT, destinations_toml
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


def test_choose_port_takes_the_asked_port_and_says_when_it_is_taken() -> None:
    import socket

    from worker.cli.dev import PortTaken, choose_port

    free = free_port()
    assert choose_port(free) == free
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        with pytest.raises(PortTaken, match=f"port {taken} \\(ingest\\) is taken.*--port 0"):
            choose_port(taken, "ingest", "--port")
    assert choose_port(0) > 0


def test_a_port_in_time_wait_is_free() -> None:
    """The side that closes a connection first keeps it in TIME_WAIT; a server (SO_REUSEADDR) can bind the port."""
    import socket

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end of the connection enters TIME_WAIT
        client.recv(1)
        client.close()
    # without SO_REUSEADDR the port still looks taken ...
    with socket.socket() as plain, pytest.raises(OSError, match="in use"):
        plain.bind(("127.0.0.1", port))
    assert port_is_free(port)  # ... but not to the check ctrelay dev makes


def test_merged_destinations_keep_the_users_file_and_add_the_sandbox(tmp_path: Path) -> None:
    from worker.cli.dev import merged_destinations

    theirs = tmp_path / "live.toml"
    theirs.write_text('[[destinations]]\nwrite_key = "wk_live"\naccount_id = "LIVE"\npasscode_env = "LIVE_PASS"\n')
    dev = destinations_toml("wk_dev", DEV_ACCOUNT, "s3cret", "http://127.0.0.1:8900")
    merged = tmp_path / "merged.toml"
    merged.write_text(merged_destinations(theirs, {"wk_live"}, dev, "wk_dev"))
    loaded = load_destinations(merged, env={"LIVE_PASS": "p"})
    assert sorted(loaded) == ["wk_dev", "wk_live"]
    assert loaded["wk_live"].base_url == "https://api.clevertap.com"
    merged.write_text(merged_destinations(theirs, {"wk_live", "wk_dev"}, dev, "wk_dev"))
    assert sorted(load_destinations(merged, env={"LIVE_PASS": "p"})) == ["wk_live"]  # their wk_dev wins


def test_supervisor_restarts_a_child_that_dies_and_gives_up_on_a_crash_loop(tmp_path: Path) -> None:
    from worker.cli.processes import MAX_RESTARTS, ChildExited

    supervisor = Supervisor(env=dict(os.environ), cwd=tmp_path)
    child = supervisor.start("short-lived", ["no-such-command"])
    try:
        for attempt in range(MAX_RESTARTS):
            child.process.wait(timeout=30)
            (said,) = supervisor.restart_exited(now=100.0 + attempt)
            assert said.startswith("short-lived (pid ")
            assert "restarted it" in said
        child.process.wait(timeout=30)
        with pytest.raises(ChildExited, match="not restarting it"):
            supervisor.restart_exited(now=100.0 + MAX_RESTARTS)
    finally:
        supervisor.stop_all(timeout_s=1)


def test_held_output_comes_out_in_order_after_release(tmp_path: Path) -> None:
    import io

    from worker.cli.processes import Output

    sink = io.BytesIO()
    output = Output(sink)
    output.write(b"starting\n")
    assert sink.getvalue() == b""
    sink.write(b"BANNER\n")
    output.release()
    output.write(b"running\n")
    assert sink.getvalue() == b"BANNER\nstarting\nrunning\n"


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

LIVE_ACCOUNT = "LIVE-ACCOUNT"
LIVE_PASSCODE = "live-secret"


@dataclass
class DevRun:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path
    live: subprocess.Popen[bytes]  # a second sandbox, standing in for a real CleverTap account
    live_url: str
    env: dict[str, str]  # the shell's environment ctrelay dev was started from


@pytest.fixture(params=["redis-server", "fakeredis"])
def dev_run(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DevRun]:
    """``ctrelay dev --destinations live.toml`` with no Redis at REDIS_URL (a closed port), on free ports, in a
    session of its own (as a terminal's foreground job); killed if the test fails.

    Embedded Redis: the ``redis-server`` binary, or (``--no-redis-server``, as on a machine with only
    Python) the in-process fakeredis. ``live.toml`` holds one destination, ``wk_live``, whose endpoint is a
    second sandbox accepting only its account and passcode (given by ``passcode_env``, as in production)."""
    live_port = free_port()
    live_url = f"http://127.0.0.1:{live_port}"
    live = subprocess.Popen(
        [sys.executable, "-c", CLI, "sandbox", "--port", str(live_port),
         "--accounts", f"{LIVE_ACCOUNT}:{LIVE_PASSCODE}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    live_toml = tmp_path / "live.toml"
    live_toml.write_text(
        f'[[destinations]]\nwrite_key = "wk_live"\naccount_id = "{LIVE_ACCOUNT}"\npasscode_env = "LIVE_PASSCODE"\n'
        f'endpoint = "{live_url}"\n'
    )
    ports = {"ingest": free_port(), "sandbox": free_port(), "metrics": free_port()}
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
            "CTRELAY_REDIS_PREFIX": f"test-dev-{uuid.uuid4().hex[:8]}",
            "CTRELAY_LOG_FORMAT": "json",
            "CTRELAY_PARTITIONS": "4",
            "LIVE_PASSCODE": LIVE_PASSCODE,
        }
    )
    args = ["dev", "--port", str(ports["ingest"]), "--sandbox-port", str(ports["sandbox"])]
    args += ["--metrics-port", str(ports["metrics"]), "--destinations", str(live_toml)]
    if request.param == "fakeredis":
        args.append("--no-redis-server")
    ports["embedded"] = 1 if request.param == "redis-server" and shutil.which("redis-server") else 0
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield DevRun(process, ports, log, live, live_url, env)
    finally:
        kill_tree(process)
        live.terminate()
        live.wait(timeout=10)


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
        if "Check the destinations' credentials" in text:  # the banner's last command is out
            return text
        assert process.poll() is None, f"ctrelay dev exited early:\n{text[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"ctrelay dev did not start:\n{log.read_text(errors='replace')[-3000:]}")


def banner_commands(banner: str) -> list[str]:
    """The command lines of the banner, as printed (each after its ``  $ `` prompt)."""
    from worker.cli.banner import PROMPT

    return [line[len(PROMPT) :] for line in banner.splitlines() if line.startswith(PROMPT)]


def records_of(url: str, account: str, identity: str) -> set[tuple[str, str | None]]:
    records = httpx.get(f"{url}/_sandbox/records", params={"account_id": account}, timeout=5).json()["records"]
    return {
        (r["record"]["type"], r["record"].get("evtName")) for r in records if r["record"].get("identity") == identity
    }


def wait_for_records(url: str, account: str, identity: str, expected: set[tuple[str, str | None]]) -> None:
    found: set[tuple[str, str | None]] = set()
    end = time.monotonic() + 60
    while time.monotonic() < end and not expected <= found:
        found = records_of(url, account, identity)
        time.sleep(0.2)
    assert expected <= found, f"{url} got {found} for {identity}"


def cmdlines(pids: Iterable[int]) -> str:
    found = []
    for pid in pids:
        with contextlib.suppress(OSError):
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return "\n".join(found)


@pytest.mark.e2e
def test_dev_delivers_to_the_sandbox_and_a_real_account_runs_its_banner_and_stops_on_ctrl_c(dev_run: DevRun) -> None:
    from segment.analytics import Client

    process, ports, log = dev_run.process, dev_run.ports, dev_run.log
    banner = wait_for_banner(process, log)
    ingest = f"http://127.0.0.1:{ports['ingest']}"
    sandbox = f"http://127.0.0.1:{ports['sandbox']}"
    kind = "redis-server" if ports["embedded"] else "fakeredis"
    assert f"({kind}," in banner, "REDIS_URL does not answer: Redis must be embedded"
    assert banner.lstrip().startswith("ctrelay dev is running"), "nothing may come before the banner"
    assert "wk_live → " + dev_run.live_url in banner
    assert "wk_dev → the sandbox" in banner

    tree = descendants(process.pid)
    expected_children = 3 + ports["embedded"]  # sandbox, worker, ingest (+ redis-server; fakeredis is a thread)
    assert len(tree) >= expected_children, f"expected Redis, sandbox, worker and ingest below ctrelay dev, got {tree}"
    destinations = next(line.split()[-1] for line in banner.splitlines() if line.strip().startswith("destinations"))
    passcode = next(
        line.split('"')[1] for line in Path(destinations).read_text().splitlines() if line.startswith("passcode =")
    )
    assert passcode not in cmdlines(tree), "the sandbox passcode must not be on a command line (ps)"

    # every command the banner prints runs as printed, from the shell ctrelay dev was started in
    commands = banner_commands(banner)
    assert len(commands) == 4
    for command in commands:
        done = subprocess.run(["bash", "-c", command], env=dev_run.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        assert "warning" not in (done.stdout + done.stderr).lower(), f"{command}\n{done.stdout}\n{done.stderr}"
        if command.endswith("/v1/track"):
            assert done.stdout == '{"success":true}'
        if command.endswith(" check"):
            assert done.stdout.count("credentials accepted") == 2, done.stdout

    errors: list[object] = []
    user = f"user-{uuid.uuid4().hex[:8]}"
    events = [f"Dev Event {n}" for n in range(5)]
    for write_key in ("wk_dev", "wk_live"):
        client = Client(write_key=write_key, host=ingest, sync_mode=True, on_error=lambda e, batch: errors.append(e))
        client.identify(user, {"email": "ada@example.com", "plan": "pro"})
        for name in events:
            client.track(user, name, {"n": 1})
        client.flush()
    assert errors == []
    expected = {("profile", None), *(("event", name) for name in events)}
    wait_for_records(sandbox, DEV_ACCOUNT, user, expected)
    wait_for_records(dev_run.live_url, LIVE_ACCOUNT, user, expected)

    # a worker that dies is started again, and delivers
    worker = next(pid for pid in tree if "ctrelay') worker" in cmdlines([pid]))
    os.killpg(worker, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while "restarted it" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    Client(write_key="wk_dev", host=ingest, sync_mode=True).track(user, "After Restart", {})
    wait_for_records(sandbox, DEV_ACCOUNT, user, {("event", "After Restart")})

    tree = descendants(process.pid)  # again: everything started by now
    before = len(log.read_text(errors="replace"))
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: SIGINT to the foreground process group
    assert process.wait(timeout=90) == 0, log.read_text(errors="replace")[-3000:]
    deadline = time.monotonic() + 10
    while still_running(tree) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert still_running(tree) == [], f"left behind: {still_running(tree)}"
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[before:][-3000:]
    assert "ERROR" not in text, text[before:][-3000:]
    assert '"level": "error"' not in text, text[before:][-3000:]


@pytest.mark.e2e
def test_dev_stops_when_an_asked_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", CLI, "dev", "--port", str(taken), "--sandbox-port", "0", "--metrics-port", "0"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2
    assert f"port {taken} (ingest) is taken" in done.stderr
    assert "--port 0" in done.stderr


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
