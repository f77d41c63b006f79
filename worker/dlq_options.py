"""The filter options every ``ctrelay dlq`` command takes, declared once: ``--reason --code --event --type
--destination --since --until --limit``. A command decorated with :func:`filtered` declares ``filters: Filters``
and receives them as one value; typer sees (and ``--help`` shows) the eight options.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from worker.deadletters import Filter

_REASON = Annotated[
    str | None,
    typer.Option(help="invalid_message, rejected, retries_exhausted or auth_failed", show_default=False),
]
_CODE = Annotated[int | None, typer.Option(help="CleverTap's per-record code (e.g. 523)", show_default=False)]
_EVENT = Annotated[str | None, typer.Option(help="the track event's name", show_default=False)]
_TYPE = Annotated[str | None, typer.Option("--type", help="the Segment call type (track, identify, ...)")]
_DESTINATION = Annotated[str | None, typer.Option("--destination", help="the destination's write key")]
_SINCE = Annotated[str | None, typer.Option(help="last failure at or after: epoch s, ISO 8601, or an age (2h, 7d)")]
_UNTIL = Annotated[str | None, typer.Option(help="last failure at or before (same forms as --since)")]
LIMIT = Annotated[int | None, typer.Option(help="at most this many letters", show_default=False)]


@dataclass(frozen=True)
class Filters:
    """The filter options every command takes (declared once, by :func:`filtered`)."""

    reason: str | None = None
    code: int | None = None
    event: str | None = None
    type: str | None = None
    destination: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int | None = None

    def where(self, ids: list[str] | None = None) -> Filter:
        """The checked :class:`Filter` (raises ``OperatorError``: call it where the command reports errors)."""
        from worker.dlq import make_filter

        return make_filter(now=time.time(), ids=ids or (), **asdict(self))


_FILTER_OPTIONS = {
    "reason": _REASON,
    "code": _CODE,
    "event": _EVENT,
    "type": _TYPE,
    "destination": _DESTINATION,
    "since": _SINCE,
    "until": _UNTIL,
}


def filtered(
    limit: Any = LIMIT, default_limit: int | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the filter options ``--reason ... --limit``, placed before its ``--json`` (else last).

    The command declares ``filters: Filters`` instead of the eight options and receives them as one value.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "filters"]
        keyword = inspect.Parameter.KEYWORD_ONLY
        options = [
            inspect.Parameter(name, keyword, annotation=alias, default=None) for name, alias in _FILTER_OPTIONS.items()
        ]
        options.append(inspect.Parameter("limit", keyword, annotation=limit, default=default_limit))
        at = next((i for i, p in enumerate(own) if p.name == "as_json"), len(own))
        parameters = [*own[:at], *options, *own[at:]]

        @wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            chosen = {name: kwargs.pop(name) for name in (*_FILTER_OPTIONS, "limit")}
            command(*args, filters=Filters(**chosen), **kwargs)

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # what typer reads
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate
