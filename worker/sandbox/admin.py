"""The sandbox's own API (``/_sandbox/*``): inspect what it accepted, read its counters, set its faults.

- ``GET /_sandbox/records`` (``?account_id=``, ``?since=``, ``?limit=``): accepted records, oldest first;
  ``DELETE /_sandbox/records`` clears records, deletions and counters.
- ``GET /_sandbox/stats``, ``GET /_sandbox/deletions`` (``?account_id=``).
- ``GET|POST|DELETE /_sandbox/faults``: read, change (partial JSON), reset to the start-up faults.
- ``GET|POST /_sandbox/accounts``: the accepted account ids (never their passcodes); replace them.
- ``GET /_sandbox/health``.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from worker.sandbox.faults import FaultState
from worker.sandbox.responses import fail, json_response
from worker.sandbox.state import Sandbox


class Admin:
    """The ``/_sandbox/*`` routes, bound to one sandbox."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def records(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.sandbox.store.clear()
            self.sandbox.stats = self.sandbox.stats.fresh()
            return json_response(200, {"cleared": True})
        query = request.query_params
        try:
            since = int(query.get("since", "0"))
            limit = int(query["limit"]) if "limit" in query else None
        except ValueError:
            return fail(400, "since and limit must be integers")
        body = self.sandbox.store.render(query.get("account_id"), since, limit)
        return Response(body, media_type="application/json")

    async def stats(self, request: Request) -> Response:
        store = self.sandbox.store
        return json_response(200, self.sandbox.stats.describe(len(store), store.not_stored, len(store.deletions)))

    async def deletions(self, request: Request) -> Response:
        account = request.query_params.get("account_id")
        found = [d for d in self.sandbox.store.deletions if account is None or d["account_id"] == account]
        return json_response(200, {"deletions": found})

    async def faults(self, request: Request) -> Response:
        state = self.sandbox.faults
        if request.method == "POST":
            try:
                changes = orjson.loads(await request.body())
                if type(changes) is not dict:
                    raise ValueError("the body must be a JSON object of fault settings")
                state.update(changes)
            except ValidationError as exc:
                return fail(400, FaultState.explain(exc))
            except ValueError as exc:  # orjson.JSONDecodeError is a ValueError
                return fail(400, str(exc))
        elif request.method == "DELETE":
            state.reset()
        return json_response(200, state.describe())

    async def accounts(self, request: Request) -> Response:
        sandbox = self.sandbox
        if request.method == "POST":
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                return fail(400, "Invalid JSON body")
            accounts = body.get("accounts", False) if type(body) is dict else False
            if accounts is not None and not (
                type(accounts) is dict
                and all(type(k) is str and k and type(v) is str and v for k, v in accounts.items())
            ):
                return fail(400, 'The body must be {"accounts": {"ID": "PASSCODE", ...}} or {"accounts": null}')
            sandbox.accounts = accounts
        ids = None if sandbox.accounts is None else sorted(sandbox.accounts)
        return json_response(200, {"accounts": ids})

    async def health(self, request: Request) -> Response:
        return json_response(200, {"ok": True})
