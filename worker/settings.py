"""Process settings, read once from the environment at an entry point and passed down.

Precedence (pydantic-settings): explicit arguments > environment variables > defaults. Every
variable is prefixed ``CTRELAY_`` except ``REDIS_URL``. This is the only module that reads the
environment; :func:`load` returns the settings and the validated destinations together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.destinations import Destinations, load_destinations


class Settings(BaseSettings):
    """Everything a relay process is configured with, besides the destinations file itself."""

    model_config = SettingsConfigDict(env_prefix="CTRELAY_", extra="ignore", frozen=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "CTRELAY_REDIS_URL")
    )
    redis_prefix: str = Field(default="ctrelay", description="prefix of every Redis key the relay owns")
    destinations: Path = Field(default=Path("destinations.toml"), description="the destinations TOML file")
    partitions: int = Field(default=16, ge=1, le=4096, description="number of stream partitions")
    admin_token: SecretStr | None = Field(default=None, description="enables the admin API when set")
    deadletter_retention: int = Field(default=14 * 86_400, ge=1, description="seconds a dead letter is kept")
    log_level: str = "info"
    log_format: str = Field(default="auto", description="json, console, or auto (console on a terminal)")


@dataclass(frozen=True)
class Config:
    """What an entry point hands down: settings plus the validated destinations."""

    settings: Settings
    destinations: Destinations


def load(settings: Settings | None = None) -> Config:
    """Read the environment and the destinations file once; raise ConfigError when either is invalid."""
    settings = settings if settings is not None else Settings()
    return Config(settings=settings, destinations=load_destinations(settings.destinations, env=os.environ))


def environment() -> dict[str, str]:
    """A copy of the environment, for resolving ``passcode_env`` outside :func:`load`."""
    return dict(os.environ)
