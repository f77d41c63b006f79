"""The filter options of every ``ctrelay dlq`` command: ``--reason --code --event --type --destination --since
--until --limit``, made from the fields of :class:`worker.store.letters.Filter` (their one declaration). A command
decorated with :func:`filtered` declares ``filters: Filters`` and receives them as one value; typer sees (and
``--help`` shows) one option per field.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any

import typer

from worker.store.letters import FILTER_FIELDS, Filter, make_filter

TIMES = frozenset({"since", "until"})
"""Fields read from text on the command line (an age such as ``2h`` is not a number)."""


def _option(name: str) -> Any:
    """The typer annotation of one filter field: its type (text for times) and its description as help."""
    field = Filter.model_fields[name]
    kind: Any = str | None if name in TIMES else field.annotation
    return Annotated[kind, typer.Option(f"--{name}", help=field.description, show_default=False)]


class Filters:
    """The filters a command was given (None: not given), checked into a :class:`Filter` by :meth:`where`."""

    def __init__(self, chosen: dict[str, Any]) -> None:
        self.chosen = chosen

    @property
    def limit(self) -> int | None:
        limit = self.chosen.get("limit")
        return limit if isinstance(limit, int) else None

    def where(self, ids: list[str] | None = None) -> Filter:
        """The checked filter (raises ``OperatorError``: call it where the command reports errors)."""
        given = {name: value for name, value in self.chosen.items() if value is not None}
        return make_filter(now=time.time(), ids=ids or (), **given)


def filtered(
    limit: Any = None, default_limit: int | None = None
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the filter options, placed before its ``--json`` (else last); ``limit`` overrides the
    ``--limit`` option's annotation (e.g. its help), ``default_limit`` its default.

    The command declares ``filters: Filters`` instead of the options and receives them as one value.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "filters"]
        keyword = inspect.Parameter.KEYWORD_ONLY
        options = [
            inspect.Parameter(
                name,
                keyword,
                annotation=limit if name == "limit" and limit is not None else _option(name),
                default=default_limit if name == "limit" else None,
            )
            for name in FILTER_FIELDS
        ]
        at = next((i for i, p in enumerate(own) if p.name == "as_json"), len(own))
        parameters = [*own[:at], *options, *own[at:]]

        @wraps(command)
        def run(*args: Any, **kwargs: Any) -> None:
            chosen = {name: kwargs.pop(name) for name in FILTER_FIELDS}
            command(*args, filters=Filters(chosen), **kwargs)

        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]  # what typer reads
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate
