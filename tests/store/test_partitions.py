"""The partition count stored in Redis on first use; another count is refused; changed only on an empty queue."""

from __future__ import annotations

import pytest
import redis

from worker.core.errors import ConfigError
from worker.core.keys import GROUP, Keys
from worker.store.streams import change_partitions, check_partitions, claim_partitions, ensure_group

pytestmark = pytest.mark.integration


def test_the_first_use_stores_the_count_and_another_count_is_refused(redis_client: redis.Redis, keys: Keys) -> None:
    check_partitions(redis_client, keys, 8)  # nothing stored yet: a reader accepts any count, writes nothing
    assert redis_client.get(keys.partitions()) is None
    claim_partitions(redis_client, keys, 8)
    claim_partitions(redis_client, keys, 8)
    assert redis_client.get(keys.partitions()) == b"8"
    for refuse in (claim_partitions, check_partitions):
        with pytest.raises(ConfigError, match=r"CTRELAY_PARTITIONS is 4 .* laid out in 8 partitions") as caught:
            refuse(redis_client, keys, 4)
        assert "CTRELAY_PARTITIONS=8" in str(caught.value)
        assert "ctrelay partitions --set 4" in str(caught.value)
    assert redis_client.get(keys.partitions()) == b"8"


def test_the_count_changes_only_on_an_empty_queue(redis_client: redis.Redis, keys: Keys) -> None:
    claim_partitions(redis_client, keys, 4)
    stream = keys.stream(3)
    ensure_group(redis_client, stream)
    entry = redis_client.xadd(stream, {"w": "wk", "m": "{}"})
    with pytest.raises(ConfigError, match=r"not empty \(1 undelivered"):
        change_partitions(redis_client, keys, 8)
    redis_client.xreadgroup(GROUP, "c", {stream: ">"})
    redis_client.xack(stream, GROUP, entry)
    redis_client.xdel(stream, entry)
    redis_client.zadd(keys.retry_due(0), {"item": 1.0})
    with pytest.raises(ConfigError, match="not empty"):  # a retry waits in a partition's schedule
        change_partitions(redis_client, keys, 8)
    redis_client.delete(keys.retry_due(0))
    redis_client.set(keys.lease(1), "token", px=30_000)
    with pytest.raises(ConfigError, match="1 drains holding a lease"):
        change_partitions(redis_client, keys, 8)
    redis_client.delete(keys.lease(1))
    assert change_partitions(redis_client, keys, 8) == 4
    claim_partitions(redis_client, keys, 8)
    with pytest.raises(ConfigError):
        claim_partitions(redis_client, keys, 4)
