"""The Compose profile ``cluster``: three primaries, a one-shot create, and the override that moves the relay there."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
NODES = ("redis-cluster-1", "redis-cluster-2", "redis-cluster-3")


def compose(path: str = "docker-compose.yml") -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / path).read_text())
    return loaded


def test_the_cluster_profile_has_three_primaries_of_their_own() -> None:
    services = compose()["services"]
    data = set()
    for name in NODES:
        node = services[name]
        assert node["profiles"] == ["cluster"], name
        assert node["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
        assert "--cluster-enabled" in node["command"], name
        assert node["healthcheck"]["test"][0] == "CMD", name
        (volume,) = [v for v in node["volumes"] if v.endswith(":/data")]
        data.add(volume.split(":")[0])
    assert len(data) == 3  # each primary its own data volume
    assert data <= set(compose()["volumes"])


def test_the_one_shot_create_waits_for_every_node_and_is_valid_shell() -> None:
    create = compose()["services"]["redis-cluster-create"]
    assert create["profiles"] == ["cluster"]
    assert create["restart"] == "no"
    assert {name: dep["condition"] for name, dep in create["depends_on"].items()} == dict.fromkeys(
        NODES, "service_healthy"
    )
    script = create["command"][2].replace("$$", "$")  # Compose's escape of a literal $
    assert all(name in script for name in NODES)
    assert "--cluster-yes" in script
    assert subprocess.run(["sh", "-n", "-c", script], check=False).returncode == 0


def test_the_override_moves_every_redis_client_of_the_relay_onto_the_cluster() -> None:
    base, override = compose()["services"], compose("deploy/compose.cluster.yml")["services"]
    for name, service in override.items():
        assert name in base, name
        env = service["environment"]
        assert env["CTRELAY_REDIS_CLUSTER"] == "true"
        assert env["REDIS_URL"].split("//")[1].split(":")[0] in NODES
        assert env["CTRELAY_BROKER_URL"].split("//")[1].split(":")[0] == "redis"  # the plain Redis: the broker
        assert service["depends_on"]["redis-cluster-create"]["condition"] == "service_completed_successfully"
    assert {"ingest", "worker", "flower"} == set(override)
    assert "CTRELAY_REDIS_CLUSTER" in base["worker"]["environment"]  # settable from .env without the override
