"""CleverTap destinations: the per-write-key settings and the TOML file that holds them.

Pure: no environment is read here. A ``passcode_env`` is resolved against the mapping the entry
point passes in (normally ``os.environ``, read once in :mod:`worker.core.settings`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from worker.core.errors import ConfigError

DEFAULT_HOST = "api.clevertap.com"
REGIONS = frozenset({"in1", "us1", "sg1", "aps3", "mec1", "sk1"})
_LEGACY_REGIONS = {"in": "in1", "sg": "sg1"}
MAX_PROFILE_KEY = 120  # CleverTap's limit on a profile key


def normalize_region(value: str | None) -> str:
    """Turn any accepted spelling of a region into its canonical name ('' means the default, eu1).

    >>> normalize_region(" in. "), normalize_region("sg1."), normalize_region("EU1"), normalize_region(" ")
    ('in1', 'sg1', '', '')
    """
    region = (value or "").strip().strip(".").strip().lower()
    region = _LEGACY_REGIONS.get(region, region)
    if region in ("", "eu1"):
        return ""
    if region not in REGIONS:
        known = ", ".join(sorted(REGIONS | {"eu1"}))
        raise ValueError(f"unknown region {value!r} (expected one of: {known}, or empty)")
    return region


class Destination(BaseModel):
    """One CleverTap destination, as configured for one Segment write key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    write_key: str = ""
    account_id: str
    passcode: SecretStr | None = None
    account_token: str | None = None  # CleverTap's Account Token: used by the mobile SDKs only; accepted and ignored
    region: str = ""
    endpoint: str | None = None
    send_anonymous_id_as_object_id: bool = True
    alias: bool = True
    page_event_name: str = "Web Page Viewed"
    screen_event_name: str = "App Screen Viewed"
    token_dedup_window: int = Field(default=86_400, ge=0, description="seconds")
    delete_event_name: str = "Delete User"
    allow_delete_events: bool = False
    """Whether a client's ``delete_event_name`` track deletes the user (write keys of browsers and apps are public:
    off by default, such a track is then an ordinary event). The operator's deletions work either way."""
    name: str = ""
    """How logs, metrics and the CLI name this destination (never by its write key): default its ``account_id``,
    made unique by :class:`Destinations` (``ACC``, ``ACC-2``, ...)."""
    webhook_secret: SecretStr | None = None
    profile_keys: dict[str, str] = Field(default_factory=dict, description="trait key as sent → CleverTap key")

    @field_validator("account_id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        return value

    @field_validator("region", mode="before")
    @classmethod
    def _region(cls, value: object) -> str:
        if value is not None and not isinstance(value, str):
            raise ValueError("must be a string")
        return normalize_region(value)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"must be a full http(s) URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def _default_name(self) -> Destination:
        if not self.name.strip():
            object.__setattr__(self, "name", self.account_id)  # frozen: set once, while validating
        return self

    @field_validator("page_event_name", "screen_event_name", "delete_event_name")
    @classmethod
    def _event_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("profile_keys")
    @classmethod
    def _profile_keys(cls, value: dict[str, str]) -> dict[str, str]:
        """Both sides verbatim: a trait key as clients send it, a CleverTap key as CleverTap spells it."""
        for trait, key in value.items():
            if not trait:
                raise ValueError("a trait key must not be empty")
            if not key.strip():
                raise ValueError(f"{trait!r}: the CleverTap key must not be empty")
            if len(key) > MAX_PROFILE_KEY:
                raise ValueError(f"{trait!r}: the CleverTap key is longer than {MAX_PROFILE_KEY} characters")
        return value

    @property
    def base_url(self) -> str:
        """Where uploads go: the endpoint override, else the region's host."""
        if self.endpoint:
            return self.endpoint
        host = f"{self.region}.{DEFAULT_HOST}" if self.region else DEFAULT_HOST
        return f"https://{host}"


class Destinations(Mapping[str, Destination]):
    """The configured destinations, by write key; every :attr:`Destination.name` unique and no write key.

    A name left to its default (the account id) that another destination already has becomes ``<account_id>-2``,
    ``-3``, ... in file order; a name given twice, or equal to a write key, is a :class:`ConfigError`."""

    def __init__(self, destinations: list[Destination]) -> None:
        write_keys = {d.write_key for d in destinations if d.write_key}
        taken: set[str] = set()
        named: list[Destination] = []
        for given in destinations:
            destination, name = given, given.name
            if name in write_keys:
                raise ConfigError(f"destination name {name!r} is also a write key: give it another name")
            if name in taken:
                if name != destination.account_id:
                    raise ConfigError(f"destination name {name!r} is given twice")
                number = 2
                while f"{name}-{number}" in taken or f"{name}-{number}" in write_keys:
                    number += 1
                name = f"{name}-{number}"
                destination = destination.model_copy(update={"name": name})
            taken.add(name)
            named.append(destination)
        self._by_key = {d.write_key: d for d in named}

    def __getitem__(self, write_key: str) -> Destination:
        return self._by_key[write_key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)


def _describe(errors: ValidationError) -> str:
    parts = []
    for error in errors.errors():
        field = ".".join(str(p) for p in error["loc"]) or "(table)"
        parts.append(f"{field}: {error['msg']}")
    return "; ".join(parts)


def parse_destination(
    table: Mapping[str, Any], *, env: Mapping[str, str], where: str, require_passcode: bool
) -> Destination:
    """Validate one ``[[destinations]]`` table. ``where`` names it in errors (file and index).

    Without ``require_passcode`` (previews, operator commands that never upload), a ``passcode_env``
    naming a variable that is not set leaves the passcode unset instead of being an error.
    """
    data = dict(table)
    label = f"{where} (write_key {data.get('write_key')!r})" if data.get("write_key") else where
    passcode_env = data.pop("passcode_env", None)
    if passcode_env is not None:
        if "passcode" in data:
            raise ConfigError(f"{label}: passcode: give either passcode or passcode_env, not both")
        if not isinstance(passcode_env, str) or (require_passcode and passcode_env not in env):
            raise ConfigError(f"{label}: passcode_env: environment variable {passcode_env!r} is not set")
        if passcode_env in env:
            data["passcode"] = env[passcode_env]
    try:
        destination = Destination.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{label}: {_describe(exc)}") from None
    if require_passcode and (destination.passcode is None or not destination.passcode.get_secret_value()):
        raise ConfigError(f"{label}: passcode: required (set passcode or passcode_env)")
    return destination


def parse_destinations(
    document: Mapping[str, Any], *, env: Mapping[str, str], source: str, require_passcode: bool = True
) -> Destinations:
    """Validate a whole destinations document (``{"destinations": [table, ...]}``)."""
    tables = document.get("destinations")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(f"{source}: expected at least one [[destinations]] table")
    seen: set[str] = set()
    result = []
    for index, table in enumerate(tables):
        where = f"{source}: destinations[{index}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table")
        destination = parse_destination(table, env=env, where=where, require_passcode=require_passcode)
        if not destination.write_key.strip():
            raise ConfigError(f"{where}: write_key: must not be empty")
        if destination.write_key in seen:
            raise ConfigError(f"{where}: write_key: {destination.write_key!r} is configured twice")
        seen.add(destination.write_key)
        result.append(destination)
    try:
        return Destinations(result)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: destinations file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_destinations(path: Path, *, env: Mapping[str, str], require_passcode: bool = True) -> Destinations:
    """Read and validate the destinations file; raise :class:`ConfigError` naming the table and field."""
    return parse_destinations(read_toml(path), env=env, source=str(path), require_passcode=require_passcode)


def load_single_destination(path: Path, *, env: Mapping[str, str]) -> Destination:
    """Read one destination: a bare table, or a file with exactly one ``[[destinations]]`` entry."""
    document = read_toml(path)
    tables = document.get("destinations")
    if tables is not None:
        if not isinstance(tables, list) or len(tables) != 1 or not isinstance(tables[0], Mapping):
            raise ConfigError(f"{path}: expected exactly one [[destinations]] table")
        return parse_destination(tables[0], env=env, where=f"{path}: destinations[0]", require_passcode=False)
    return parse_destination(document, env=env, where=str(path), require_passcode=False)
