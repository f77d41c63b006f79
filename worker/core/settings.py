"""Process settings, read once from the environment at an entry point and passed down.

Precedence (pydantic-settings): explicit arguments > environment variables > defaults. Every
variable is prefixed ``CTRELAY_`` except ``REDIS_URL`` (and ``PROMETHEUS_MULTIPROC_DIR``; ``REDIS_URL`` and it
may also be spelt ``CTRELAY_REDIS_URL`` and ``CTRELAY_PROMETHEUS_MULTIPROC_DIR``). This is the only module that
reads the environment; :func:`load` returns the settings and the validated destinations together. The one
variable the relay writes is ``PROMETHEUS_MULTIPROC_DIR``, for prometheus-client in its child processes
(``ctrelay ingest --workers N``, ``ctrelay worker --pool prefork``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.core.destinations import Destinations, load_destinations


class Settings(BaseSettings):
    """Everything a relay process is configured with, besides the destinations file itself."""

    model_config = SettingsConfigDict(env_prefix="CTRELAY_", extra="ignore", frozen=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "CTRELAY_REDIS_URL")
    )
    redis_prefix: str = Field(default="ctrelay", description="prefix of every Redis key the relay owns")
    # Connection modes (worker/store/connections.py; README "Redis and the broker").
    redis_sentinels: str | None = Field(
        default=None, description="host:port,... of Redis Sentinels: the queue's Redis is the primary they name"
    )
    redis_sentinel_master: str = Field(default="mymaster", description="the primary's name at the Sentinels")
    redis_cluster: bool = Field(default=False, description="REDIS_URL names a node of a Redis Cluster")
    broker_url: str | None = Field(default=None, description="Celery's broker (default: the queue's Redis)")
    min_replicas: int = Field(default=0, ge=0, description="replicas that must hold a request's messages before 200")
    min_replicas_timeout_s: float = Field(default=1.0, gt=0, description="how long ingest waits for those replicas")
    destinations: Path = Field(default=Path("destinations.toml"), description="the destinations TOML file")
    partitions: int = Field(default=16, ge=1, le=4096, description="number of stream partitions")
    admin_token: SecretStr | None = Field(default=None, description="enables the admin API when set")
    deadletter_retention: int = Field(default=14 * 86_400, ge=1, description="seconds a dead letter is kept")
    max_import_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, description="one POST /admin/deadletters/import body (JSON lines)"
    )
    log_level: str = "info"
    log_format: str = Field(default="auto", description="json, console, or auto (console on a terminal)")
    # Delivery (worker/delivery/; README "Delivery").
    metrics_port: int = Field(default=9108, ge=0, description="worker Prometheus metrics port (0: off)")
    worker_concurrency: int = Field(default=16, ge=1, description="drain threads per `ctrelay worker` process")
    read_batch: int = Field(default=1000, ge=1, le=1000, description="stream entries read per drain step")
    read_pace_ms: float = Field(
        default=200.0, ge=0, le=1000, description="after a read under half a batch, the next read waits this long"
    )
    upload_timeout_s: float = Field(default=30.0, gt=0, description="timeout of one CleverTap upload request")
    concurrency_cap: int = Field(default=15, ge=1, description="max concurrent uploads per CleverTap account")
    lease_ttl_s: float = Field(
        default=5.0, gt=0, description="a partition's drain lease and a worker's liveness key; expire if it dies"
    )
    drain_budget_s: float = Field(default=5.0, gt=0, description="how long one drain task keeps a partition")
    tick_interval_s: float = Field(default=0.2, gt=0, description="how often a worker looks for partitions with work")
    reclaim_idle_s: float = Field(default=60.0, ge=0, description="pending entries idle this long are reclaimed")
    retry_window_s: float = Field(default=14_400.0, ge=0, description="how long failing records are retried")
    backoff_min_s: float = Field(default=1.0, gt=0, description="first retry delay ceiling (full jitter)")
    backoff_max_s: float = Field(default=300.0, gt=0, description="largest retry delay ceiling")
    auth_pause_s: float = Field(default=60.0, gt=0, description="after a 401/403, wait this long before trying again")
    suppression_window_s: float = Field(
        default=30 * 86_400, ge=0, description="after a user deletion, drop that user's new messages this long"
    )

    # Ingest (ingest/): limits apply to decompressed bytes; a rejected request enqueues nothing.
    max_message_bytes: int = Field(default=32 * 1024, ge=1, description="one message, as stored (compact JSON)")
    max_batch_bytes: int = Field(default=512 * 1024, ge=1, description="one request body, decompressed")
    max_batch_messages: int = Field(default=2500, ge=1, description="messages in one batch or webhook array")
    dedup_window: int = Field(default=86_400, ge=1, description="seconds a messageId is remembered per write key")
    backlog_cap: int = Field(default=1_000_000, ge=0, description="backlog above which ingest answers 503 (0: off)")
    backlog_interval: float = Field(default=1.0, gt=0, description="seconds between two backlog measures")
    retry_after: int = Field(default=5, ge=1, description="Retry-After seconds on a 503")
    # Bodies (ingest's bounded reader, for the tracking and the admin routes).
    max_depth: int = Field(default=64, ge=2, le=250, description="nesting levels of one message (objects, arrays)")
    max_admin_body_bytes: int = Field(default=1024 * 1024, ge=1, description="one admin JSON body (not import)")
    # Ingest's HTTP server (uvicorn; deploy/runbook.md "Connections" says how to size them).
    keep_alive_timeout_s: float = Field(default=5.0, gt=0, description="an idle keep-alive connection is closed")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection whose request head is not complete this long is closed"
    )
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="request line and headers of one request")
    body_timeout_s: float = Field(default=30.0, gt=0, description="a request body not complete this long is cut")
    max_connections: int = Field(default=4096, ge=1, description="open connections per ingest process")
    limit_concurrency: int = Field(
        default=256, ge=1, description="requests in progress per process; above it new ones get 503"
    )
    # Ingest's Redis calls (the admin API's too).
    redis_timeout: float = Field(default=1.0, gt=0, description="connect and read timeout of ingest's Redis calls")
    cors_origins: str = Field(
        default="*", description="origins (comma-separated) whose web pages may send to /v1/ paths; * = any"
    )
    public_url: str | None = Field(
        default=None,
        description="the relay's public base URL (https://ingest.example.com) named by the settings document",
    )
    prometheus_multiproc_dir: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "CTRELAY_PROMETHEUS_MULTIPROC_DIR"),
        description="set by `ctrelay ingest --workers N` so that /metrics sums every worker process",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                f"CTRELAY_PUBLIC_URL must be an http(s) base URL such as https://ingest.example.com: {value!r}"
            )
        return value.strip().rstrip("/")


@dataclass(frozen=True)
class Config:
    """What an entry point hands down: settings plus the validated destinations."""

    settings: Settings
    destinations: Destinations


def load(settings: Settings | None = None, *, require_passcode: bool = True) -> Config:
    """Read the environment and the destinations file once; raise ConfigError when either is invalid.

    Without ``require_passcode`` (operator commands that never upload), a ``passcode_env`` that is not set
    leaves that passcode unset instead of being an error."""
    settings = settings if settings is not None else Settings()
    destinations = load_destinations(settings.destinations, env=os.environ, require_passcode=require_passcode)
    return Config(settings=settings, destinations=destinations)


def environment() -> dict[str, str]:
    """A copy of the environment, for resolving ``passcode_env`` outside :func:`load`."""
    return dict(os.environ)
