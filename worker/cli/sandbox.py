"""``ctrelay sandbox``: start the CleverTap sandbox (:mod:`worker.sandbox.server`) with its start-up faults.

Only typer is imported at module level; the server and its dependencies load when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def parse_accounts(text: str | None) -> dict[str, str] | None:
    """``"ID:PASSCODE,ID2:PASSCODE2"`` → ``{ID: PASSCODE}``; None or empty → None (any pair accepted)."""
    if not text or not text.strip():
        return None
    accounts: dict[str, str] = {}
    for item in text.split(","):
        account, sep, passcode = item.strip().partition(":")
        if not sep or not account or not passcode:
            raise typer.BadParameter(f"{item.strip()!r} is not ID:PASSCODE", param_hint="--accounts")
        accounts[account] = passcode
    return accounts


def _pairs(items: list[str], flag: str, value_type: type[int] | type[float]) -> dict[str, int | float]:
    found: dict[str, int | float] = {}
    for item in items:
        key, sep, value = item.rpartition("=")
        try:
            if not sep or not key:
                raise ValueError
            found[key] = value_type(value)
        except ValueError:
            raise typer.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=flag) from None
    return found


def sandbox(  # noqa: PLR0917  (a typer command: one parameter per flag)
    port: Annotated[int, typer.Option(help="port to listen on")] = 8900,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    accounts: Annotated[str | None, typer.Option(help="ID:PASSCODE,... accepted (default: any non-empty pair)")] = None,
    accounts_file: Annotated[
        Path | None,
        typer.Option(help="read ID:PASSCODE,... from this file (kept out of `ps`); adds to --accounts"),
    ] = None,
    cap: Annotated[int, typer.Option(help="concurrent requests per account before 429")] = 15,
    latency_ms: Annotated[float, typer.Option(help="added to every accepted request")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(help="uniform random extra latency, up to this")] = 0.0,
    error_rate: Annotated[
        list[str] | None, typer.Option(help="STATUS=RATE, e.g. 429=0.1 (repeatable): that share answered so")
    ] = None,
    retry_after: Annotated[int | None, typer.Option(help="Retry-After seconds on injected 429/503")] = None,
    outage: Annotated[bool, typer.Option(help="start in an outage")] = False,
    outage_mode: Annotated[str, typer.Option(help="503 (answer 503) or drop (close mid-response)")] = "503",
    timeout_rate: Annotated[float, typer.Option(help="share of requests held for --timeout-ms")] = 0.0,
    timeout_ms: Annotated[float, typer.Option(help="how long a timed-out request is held")] = 30_000.0,
    timeout_accepts: Annotated[
        bool, typer.Option(help="store a timed-out request's records even when the client hung up")
    ] = False,
    record_555_rate: Annotated[float, typer.Option(help="share of valid records answered 555")] = 0.0,
    record_error_rate: Annotated[float, typer.Option(help="share of valid records answered --record-error-code")] = 0.0,
    record_error_code: Annotated[int, typer.Option(help="the permanent code for --record-error-rate")] = 512,
    poison_event: Annotated[
        list[str] | None, typer.Option(help="evtName that makes its whole request a 400 (repeatable)")
    ] = None,
    event_code: Annotated[
        list[str] | None, typer.Option(help="NAME=CODE: events with that evtName get that code (repeatable)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="seed of the fault dice (reproducible runs)")] = None,
    max_stored: Annotated[int, typer.Option(help="records kept in memory (more are counted, not kept)")] = 5_000_000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "warning",
) -> None:
    """Run the CleverTap sandbox: CleverTap's upload API with checks, a concurrency cap and faults."""
    from pydantic import ValidationError

    from worker.core import logs
    from worker.sandbox.faults import Faults, FaultState
    from worker.sandbox.server import serve
    from worker.sandbox.state import Sandbox

    parsed_accounts = parse_accounts(accounts)
    if accounts_file is not None:
        try:
            text = accounts_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"{accounts_file}: {exc.strerror or exc}", param_hint="--accounts-file") from None
        from_file = parse_accounts(",".join(text.split()))
        if from_file is None:
            raise typer.BadParameter(f"{accounts_file} holds no ID:PASSCODE", param_hint="--accounts-file")
        parsed_accounts = {**(parsed_accounts or {}), **from_file}
    try:
        faults = Faults.model_validate(
            {
                "cap": cap,
                "latency_ms": latency_ms,
                "jitter_ms": jitter_ms,
                "error_rates": _pairs(error_rate or [], "--error-rate", float),
                "retry_after_s": retry_after,
                "outage": outage,
                "outage_mode": outage_mode,
                "timeout_rate": timeout_rate,
                "timeout_ms": timeout_ms,
                "timeout_accepts": timeout_accepts,
                "record_555_rate": record_555_rate,
                "record_error_rate": record_error_rate,
                "record_error_code": record_error_code,
                "poison_events": poison_event or [],
                "event_codes": _pairs(event_code or [], "--event-code", int),
            }
        )
    except ValidationError as exc:
        raise typer.BadParameter(FaultState.explain(exc)) from None
    logs.configure(log_level)
    import structlog

    structlog.get_logger("sandbox").info(
        "sandbox listening",
        url=f"http://{host}:{port}",
        accounts=None if parsed_accounts is None else sorted(parsed_accounts),
        faults=faults.model_dump(mode="json", exclude_defaults=True),
        seed=seed,
    )
    serve(Sandbox(FaultState(faults, seed), parsed_accounts, max_stored), host, port, log_level)
