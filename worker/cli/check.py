"""``ctrelay check``: is this relay configured to go live? Reads what a relay process reads, tries what it will use.

In order, each on one line, ``ok`` or ``FAIL``; exit status 0 when everything is ok, else 1:

1. **settings**: the environment (``CTRELAY_*``, ``REDIS_URL``) and the destinations file, validated as the relay
   validates them at start-up (a passcode whose ``passcode_env`` is unset is a failure);
2. **redis**: the Redis at ``REDIS_URL`` answers PING;
3. **each destination** (``--destination WK`` for some): one harmless authenticated call to CleverTap, the
   read-only profile lookup ``GET <base>/1/profile.json?identity=<an id that does not exist>`` with the
   destination's account id and passcode, through the relay's one HTTP seam
   (:meth:`worker.delivery.clevertap.CleverTap.lookup_profile`). It changes nothing at CleverTap. What the
   answer means:

   - no answer (timeout, DNS, refused connection): *not reachable*;
   - 401 or 403: *credentials refused* here. For a destination set by ``region`` (not ``endpoint``), the same
     lookup is then tried at every other region: when one accepts the credentials, the verdict is *region
     wrong* and names the region to set; when none does, the passcode or the account id is wrong;
   - 429 or 5xx: CleverTap is reachable but did not judge the credentials: a failure, try again;
   - any other answer (CleverTap answers 200 with ``"status": "fail"`` for an unknown profile, ``"success"``
     for a known one): *credentials accepted*, and the region is right.

   A destination with an ``endpoint`` (the sandbox, a proxy) has no region to check: the line says so.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from worker.core.destinations import Destination
    from worker.delivery.clevertap import CleverTap, Report

CHECK_TIMEOUT_S = 10.0
"""The timeout of each call ``ctrelay check`` makes (Redis and CleverTap)."""


@dataclass(frozen=True)
class Verdict:
    """What ``ctrelay check`` found for one destination."""

    ok: bool
    reachable: bool
    credentials: str  # "accepted", "refused", "not checked"
    region: str  # "right", "wrong: ...", "not checked", "endpoint override"
    detail: str = ""

    def line(self, destination: Destination) -> str:
        status = "ok  " if self.ok else "FAIL"
        where = f"account {destination.account_id} at {destination.base_url}"
        parts = [f"reachable {'yes' if self.reachable else 'no'}", f"credentials {self.credentials}"]
        parts.append(f"region {self.region}")
        text = f"{status}  destination {destination.name}: {where}: {', '.join(parts)}"
        return text + (f" ({self.detail})" if self.detail else "")


def probe_id() -> str:
    """An identity no real user has: the lookup finds nothing, whatever the account holds."""
    return f"ctrelay-check-{uuid.uuid4().hex}"


def answered(report: Report) -> str:
    """A short account of an answer: ``HTTP 401: Invalid Credentials``, ``timeout``, ``network: ...``."""
    if report.status is None:
        return report.error or "no answer"
    return f"HTTP {report.status}" + (f": {report.error}" if report.error else "")


def _refused(report: Report) -> bool:
    return report.status in (401, 403)


def _judged(report: Report) -> bool:
    """Whether CleverTap's answer says anything about the credentials (not a 429 or 5xx, and an answer at all)."""
    return report.status is not None and report.status != 429 and report.status < 500


def other_regions(destination: Destination) -> list[tuple[str, str]]:
    """(region, base URL) of every region but the destination's own (``eu1`` is the default host)."""
    from worker.core.destinations import REGIONS

    found = []
    for region in sorted(REGIONS | {""}):
        if region != destination.region:
            base = destination.model_copy(update={"region": region}).base_url
            found.append((region or "eu1", base))
    return found


def check_destination(clevertap: CleverTap, destination: Destination, identity: str) -> Verdict:
    """One destination's verdict: one profile lookup, plus one per other region when the credentials are refused."""
    report = clevertap.lookup_profile(destination, identity)
    if report.status is None:
        return Verdict(False, False, "not checked", "not checked", answered(report))
    own_region = "endpoint override" if destination.endpoint else f"{destination.region or 'eu1'} right"
    if not _judged(report):
        return Verdict(False, True, "not checked", "not checked", f"{answered(report)}: try again")
    if not _refused(report):
        return Verdict(True, True, "accepted", own_region)
    if destination.endpoint:
        return Verdict(False, True, "refused", "endpoint override", f"{answered(report)}: check the passcode")
    for region, base in other_regions(destination):
        elsewhere = clevertap.lookup_profile(destination, identity, base_url=base)
        if _judged(elsewhere) and not _refused(elsewhere):
            detail = f'the account answers at {base}: set region = "{region}"'
            return Verdict(False, True, f"accepted in {region}", "wrong", detail)
    detail = f"{answered(report)} here and in every other region: check the passcode and the account id"
    return Verdict(False, True, "refused", "not checked", detail)


def check_command(
    only: Annotated[
        list[str] | None, typer.Option("--destination", help="check only this write key (repeatable)")
    ] = None,
) -> None:
    """Check the settings, Redis and every destination's CleverTap credentials and region; exit 1 on any failure."""
    import redis
    from pydantic import ValidationError

    from worker.core.errors import ConfigError
    from worker.core.settings import Settings, load
    from worker.delivery.clevertap import CleverTap
    from worker.store.connections import Target, close, connect

    try:
        settings = Settings()
        destinations = load(settings).destinations
    except (ValidationError, ConfigError) as exc:
        typer.echo(f"FAIL  settings: {exc}")
        raise typer.Exit(1) from None
    typer.echo(f"ok    settings: {settings.destinations} ({len(destinations)} destinations)")
    failed = False
    where = Target.of(settings).describe()  # never the password
    client = None
    try:
        client = connect(settings, timeout_s=CHECK_TIMEOUT_S)  # a cluster client asks a node at once
        client.ping()
        typer.echo(f"ok    redis: {where} answers")
    except (redis.RedisError, OSError) as exc:
        typer.echo(f"FAIL  redis: {where}: {exc}")
        failed = True
    finally:
        if client is not None:
            close(client)
    chosen = [d for key, d in destinations.items() if not only or key in only]
    unknown = sorted(set(only or ()) - set(destinations))
    for key in unknown:
        typer.echo(f"FAIL  destination {key}: no such write key in {settings.destinations}")
        failed = True
    clevertap = CleverTap(timeout_s=CHECK_TIMEOUT_S)
    try:
        identity = probe_id()
        for destination in chosen:
            verdict = check_destination(clevertap, destination, identity)
            typer.echo(verdict.line(destination))
            failed = failed or not verdict.ok
    finally:
        clevertap.close()
    raise typer.Exit(1 if failed else 0)
