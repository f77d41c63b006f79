"""Test helpers for the admin API: a token, a configuration with two destinations, a synchronous ASGI client."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI

from worker.core.destinations import Destination, Destinations
from worker.core.settings import Config, Settings

TOKEN = "admin-token-0123456789"
PARTITIONS = 4
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def message(i: int, event: str = "Product Viewed") -> dict[str, Any]:
    return {"type": "track", "event": event, "userId": f"u{i}", "messageId": f"m{i}", "properties": {"n": i}}


def config(redis_url: str, prefix: str, token: str | None) -> Config:
    settings = Settings(REDIS_URL=redis_url, redis_prefix=prefix, partitions=PARTITIONS, admin_token=token)
    destinations = Destinations(
        [
            Destination(write_key="wk1", account_id="ACC-1", passcode="top-secret-1"),
            Destination(write_key="wk2", account_id="ACC-2", passcode="top-secret-2"),
        ]
    )
    return Config(settings=settings, destinations=destinations)


class AdminClient:
    """A synchronous client over httpx's ASGITransport (one event loop per request)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as client:
                return await client.request(method, path, **kw)

        return asyncio.run(send())

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)
