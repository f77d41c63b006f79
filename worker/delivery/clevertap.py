"""The one HTTP seam to CleverTap: POST /1/upload (and /1/delete/profiles.json), answered as a per-record report;
and GET /1/profile.json, the read-only profile lookup ``ctrelay check`` makes to test a destination's credentials.

:class:`CleverTap` wraps an ``httpx.Client`` (tests pass one with ``httpx.MockTransport``), and, where given one, an
``httpx`` transport that uploads and deletes go through directly (the worker's: :meth:`CleverTap.direct`). It never
raises for what CleverTap or the network answers: a timeout, a refused connection, a 5xx, a 200
with ``unprocessed`` records are all values in the :class:`Report`. What the report *means*
(deliver, retry, dead-letter, split) is decided in :mod:`worker.delivery.policy`.

CleverTap's 200 body is ``{"status", "processed", "unprocessed": [{"code", "error", "record"}]}``;
each ``unprocessed`` entry echoes its record, which is matched back to its position in the request
(exactly, else by type/identity/objectId/ts/evtName). Entries that match no record are kept as
``unmatched``: the policy then cannot tell which records were delivered.
"""

from __future__ import annotations

import email.utils
import time
import urllib.request
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from worker.core.destinations import Destination

UPLOAD_PATH = "/1/upload"
DELETE_PATH = "/1/delete/profiles.json"
PROFILE_PATH = "/1/profile.json"
MAX_RECORDS = 1000
MAX_TOKENS = 100
MAX_DELETE_IDS = 100
"""At most this many values in each of ``identity`` and ``guid`` of one delete request."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One ``unprocessed`` entry: CleverTap's per-record code and error text."""

    code: int | None
    error: str


@dataclass(frozen=True, slots=True)
class Report:
    """What one upload request came back with.

    ``status`` is the HTTP status, None when there was no response (``error`` says why: ``timeout``
    or ``network: ...``). ``failures`` maps a record's index in the request to its failure.
    """

    count: int
    status: int | None
    error: str = ""
    retry_after: float | None = None
    body_status: str | None = None
    body_code: int | None = None
    failures: Mapping[int, Failure] = field(default_factory=dict)
    unmatched: tuple[Failure, ...] = ()
    duration_s: float = 0.0

    @property
    def label(self) -> str:
        """The status as a metric label: the HTTP code, or ``timeout`` / ``network``."""
        if self.status is not None:
            return str(self.status)
        return "timeout" if self.error == "timeout" else "network"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _headers(account_id: str, passcode: str) -> dict[str, str]:
    """A request's own headers (the client adds its defaults)."""
    return {
        "X-CleverTap-Account-Id": account_id,
        "X-CleverTap-Passcode": passcode,
        "Content-Type": "application/json; charset=utf-8",
    }


def _loose_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(record.get(name) for name in ("type", "identity", "objectId", "ts", "evtName"))


def match_failures(
    records: Sequence[Mapping[str, Any]], unprocessed: Sequence[Any]
) -> tuple[dict[int, Failure], tuple[Failure, ...]]:
    """Map each ``unprocessed`` entry to the index of the record it echoes; return (matched, unmatched)."""
    exact: dict[bytes, deque[int]] = defaultdict(deque)
    loose: dict[tuple[Any, ...], deque[int]] = defaultdict(deque)
    for position, record in enumerate(records):
        exact[orjson.dumps(record, option=orjson.OPT_SORT_KEYS)].append(position)
        loose[_loose_key(record)].append(position)
    matched: dict[int, Failure] = {}
    unmatched: list[Failure] = []
    for item in unprocessed:
        entry: Mapping[str, Any] = item if isinstance(item, Mapping) else {}
        code = entry.get("code")
        failure = Failure(code=code if isinstance(code, int) else None, error=str(entry.get("error") or ""))
        echoed = entry.get("record")
        index: int | None = None
        if isinstance(echoed, Mapping):
            candidates = exact.get(orjson.dumps(echoed, option=orjson.OPT_SORT_KEYS))
            if not candidates:
                candidates = loose.get(_loose_key(echoed))
            while candidates and index is None:
                candidate = candidates.popleft()
                if candidate not in matched:
                    index = candidate
        if index is None:
            unmatched.append(failure)
        else:
            matched[index] = failure
    return matched, tuple(unmatched)


class CleverTap:
    """Uploads records to CleverTap (or the sandbox) for one destination at a time."""

    def __init__(
        self,
        client: httpx.Client | None = None,
        timeout_s: float = 30.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.client = client if client is not None else httpx.Client()
        self.timeout_s = timeout_s
        # httpx times each phase: connect and pool waits are short, so a request lasts at most ~2 × timeout_s
        short = min(5.0, timeout_s)
        self.timeout = httpx.Timeout(timeout_s, connect=short, pool=short)
        self.transport = transport
        """Uploads and deletes go straight through it when set (:meth:`_send`); the profile lookup takes the client."""
        self._extensions = {"timeout": self.timeout.as_dict()}
        self._headers: dict[tuple[str, str], httpx.Headers] = {}
        self._urls: dict[str, httpx.URL] = {}

    @classmethod
    def direct(cls, limits: httpx.Limits, timeout_s: float) -> CleverTap:
        """The worker's seam: uploads and deletes through an ``httpx.HTTPTransport`` of its own, without the
        ``httpx.Client`` layer, which costs about as much CPU again as the transport per request (~450 µs of ~1.4 ms
        for 250 records on this project's benchmark machine: the request's merging of the client's URL, headers and
        cookies, the cookie jar's extraction from the answer, the redirect and hook machinery, none of which an upload
        uses: no cookies, no redirects followed, no auth). The requests are the client's: its default headers, the
        same timeouts (``extensions``), the same exceptions (the transport maps httpcore's to httpx's), the same pool
        limits and TLS settings (``verify``, ``SSL_CERT_FILE``). Where the environment names a proxy
        (``HTTPS_PROXY``, ``ALL_PROXY``, ...), which the client honours and a bare transport does not, the client
        alone is used, as before."""
        client = httpx.Client(limits=limits)
        proxied = any(name in ("http", "https", "all") for name in urllib.request.getproxies())
        return cls(client, timeout_s, transport=None if proxied else httpx.HTTPTransport(limits=limits))

    @property
    def longest_request_s(self) -> float:
        """An upper bound of one request's duration (connect + write + read + pool), for slot deadlines."""
        return 2 * self.timeout_s + 2 * min(5.0, self.timeout_s)

    def close(self) -> None:
        self.client.close()
        if self.transport is not None:
            self.transport.close()

    def upload(self, destination: Destination, records: Sequence[Mapping[str, Any]]) -> Report:
        """POST ``records`` (at most 1000 event/profile and 100 token records) and report per record."""
        return self._post(destination, UPLOAD_PATH, orjson.dumps({"d": list(records)}), records)

    def delete(self, destination: Destination, records: Sequence[Mapping[str, Any]]) -> Report:
        """POST CleverTap's profile delete call for the deletion ``records`` (``{"type": "delete", "identity":
        [...], "guid": [...]}``, :meth:`worker.transform.deletions.Delete.record`): one request ``{"identity": [...],
        "guid": [...]}`` (each at most 100 values, duplicates removed); one verdict per deletion record."""
        identities: dict[str, None] = {}
        guids: dict[str, None] = {}
        for record in records:
            identities.update(dict.fromkeys(record.get("identity") or ()))
            guids.update(dict.fromkeys(record.get("guid") or ()))
        payload = {name: list(values) for name, values in (("identity", identities), ("guid", guids)) if values}
        return self._post(destination, DELETE_PATH, orjson.dumps(payload), records)

    def lookup_profile(self, destination: Destination, identity: str, base_url: str | None = None) -> Report:
        """GET CleverTap's profile of ``identity`` (read-only, changes nothing): what the answer's status says
        about the credentials (401/403: refused). ``base_url`` overrides the destination's (another region)."""
        query = {"identity": identity}
        return self._request(destination, "GET", PROFILE_PATH, None, (), params=query, base_url=base_url)

    def _post(self, destination: Destination, path: str, body: bytes, records: Sequence[Mapping[str, Any]]) -> Report:
        if self.transport is None:
            return self._request(destination, "POST", path, body, records)
        target = destination.base_url + path
        url = self._urls.get(target)
        if url is None:
            url = self._urls[target] = httpx.URL(target)
        if url.userinfo:  # (user:password@ in the endpoint: the client turns it into Basic auth, a bare request not)
            return self._request(destination, "POST", path, body, records)
        return self._send(self.transport, url, destination, body, records)

    def _send(
        self,
        transport: httpx.BaseTransport,
        url: httpx.URL,
        destination: Destination,
        body: bytes,
        records: Sequence[Mapping[str, Any]],
    ) -> Report:
        """A POST through ``transport`` itself: the request the client would build (its default headers, the
        destination's, the timeouts), the headers made once per destination (the URL by :meth:`_post`), the answer
        read whole, the connection given back to the pool, errors reported as :meth:`_request` reports them."""
        passcode = destination.passcode.get_secret_value() if destination.passcode is not None else ""
        headers = self._headers.get((destination.account_id, passcode))
        if headers is None:
            headers = self.client.headers.copy()
            headers.update(_headers(destination.account_id, passcode))
            self._headers[(destination.account_id, passcode)] = headers
        request = httpx.Request("POST", url, content=body, headers=headers, extensions=self._extensions)

        def send() -> httpx.Response:
            response = transport.handle_request(request)
            try:
                response.read()
            finally:
                response.close()
            return response

        return self._report(records, send)

    def _request(
        self,
        destination: Destination,
        method: str,
        path: str,
        body: bytes | None,
        records: Sequence[Mapping[str, Any]],
        *,
        params: Mapping[str, str] | None = None,
        base_url: str | None = None,
    ) -> Report:
        passcode = destination.passcode.get_secret_value() if destination.passcode is not None else ""
        headers = _headers(destination.account_id, passcode)
        url = (base_url or destination.base_url) + path
        return self._report(
            records,
            lambda: self.client.request(
                method, url, content=body, params=params, headers=headers, timeout=self.timeout
            ),
        )

    def _report(self, records: Sequence[Mapping[str, Any]], send: Callable[[], httpx.Response]) -> Report:
        """``send()``'s answer, timed, as a :class:`Report`; a timeout or a network error is a report too (never
        raised): the one way both paths (the client, the transport) tell what happened."""
        started = time.monotonic()
        try:
            response = send()
        except httpx.TimeoutException:
            return Report(count=len(records), status=None, error="timeout", duration_s=time.monotonic() - started)
        except httpx.HTTPError as exc:
            error = f"network: {type(exc).__name__}: {exc}"[:500]
            return Report(count=len(records), status=None, error=error, duration_s=time.monotonic() - started)
        return self.read(records, response, time.monotonic() - started)

    @staticmethod
    def read(records: Sequence[Mapping[str, Any]], response: httpx.Response, duration_s: float) -> Report:
        """Turn a response into a :class:`Report`."""
        count = len(records)
        retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        try:
            body = orjson.loads(response.content) if response.content else None
        except orjson.JSONDecodeError:
            body = None
        text = response.text[:500] if body is None else ""
        if not isinstance(body, dict):
            return Report(
                count=count, status=response.status_code, error=text, retry_after=retry_after, duration_s=duration_s
            )
        error = str(body.get("error") or "")[:500]
        body_status = body.get("status") if isinstance(body.get("status"), str) else None
        body_code = body.get("code") if isinstance(body.get("code"), int) else None
        unprocessed = body.get("unprocessed")
        failures: dict[int, Failure] = {}
        unmatched: tuple[Failure, ...] = ()
        if isinstance(unprocessed, list) and unprocessed:
            failures, unmatched = match_failures(records, unprocessed)
        return Report(
            count=count,
            status=response.status_code,
            error=error,
            retry_after=retry_after,
            body_status=body_status,
            body_code=body_code,
            failures=failures,
            unmatched=unmatched,
            duration_s=duration_s,
        )
