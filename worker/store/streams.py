"""The partition streams as the consumers see them: the consumer group, what it says of itself, acknowledgement.

Every worker reads every stream with one consumer group (:data:`worker.core.keys.GROUP`). An entry is done with
once it is acknowledged *and* deleted (:func:`ack_and_delete`, always queued on the caller's MULTI together with
the outcome that makes it done), so a stream holds only work not yet done. :func:`group_info` is the one reader
of ``XINFO GROUPS`` answers.

**The backlog** (:class:`PartitionBacklog`, read with :func:`queue_backlog` + :func:`read_backlog`) is measured
here once for every reader (ingest's cap, the ticker, the worker's gauges, ``ctrelay status``): per partition,
the stream's length (``XLEN``: unread plus pending entries, since done entries are deleted) plus the retry
schedule's size (``ZCARD``). Both are exact after a Redis restart or a failover. The consumer group's ``lag``
(from ``entries-read``) is not: after a restart it stops moving and reads tens of thousands with every stream
empty, so nothing here trusts it. Unread entries are the length less the pending ones (``XINFO GROUPS``'s
``pending``, the size of the pending-entries list, which is persisted with the stream).

**The partition count** is stored in Redis (``<prefix>:partitions``) by the first process that uses it
(:func:`claim_partitions`: ``SET NX``); a process started with another count (ingest, a worker, an operator
command) refuses to start (:class:`~worker.core.errors.ConfigError`), since a user's partition is
``crc32(user) % partitions`` and a mismatch strands messages in streams no worker reads.
:func:`change_partitions` changes it, only while the queue is empty.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import CaseInsensitiveDict

from worker.core.errors import ConfigError
from worker.core.keys import GROUP, Keys
from worker.store.scripts import PipelineScript, eval_allow_oom

_FLAT: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def flat_pipeline(client: redis.Redis) -> Any:
    """A plain pipeline of ``client`` (a single Redis or Sentinel's primary, not a cluster) whose ``XREADGROUP``
    answers are left as Redis sends them (a list of streams, a map under RESP3): each entry ``[id, [name, value,
    ...]]``, its fields a flat list, not a dict made per entry (redis-py's answer). A batch of 1000 entries costs the
    drain ~0.3 ms less to read."""
    callbacks = _FLAT.get(client)
    if callbacks is None:
        callbacks = CaseInsensitiveDict(client.response_callbacks)
        callbacks.pop("XREADGROUP", None)
        _FLAT[client] = callbacks
    pipe = client.pipeline(transaction=False)
    pipe.response_callbacks = callbacks
    return pipe


def ensure_group(client: redis.Redis, stream: str) -> None:
    """Create the consumer group on ``stream`` (and the stream), reading from the start; nothing if it exists."""
    try:
        client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def ensure_groups(client: redis.Redis, keys: Keys, partitions: int) -> None:
    """Create the consumer group on every partition stream."""
    for partition in range(partitions):
        ensure_group(client, keys.stream(partition))


# Deletes every entry of KEYS[1] that is done (the group ARGV[1]): those below the lowest entry not done (the lowest
# pending one, else the one after the group's last-delivered-id) in one XTRIM MINID, which frees whole blocks of the
# stream; the acknowledged ones above it (an entry still pending below them: another destination's, a dead consumer's)
# by XDEL. ``above(ms, seq, bound)``: the acknowledged ids at or above that bound (also given as its id). Returns how
# many the XDEL took.
_TRIM_DONE = """
local function trim_done(above)
  local first = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1)
  if #first == 0 then
    local last = nil
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
      local name, id = nil, nil
      for i = 1, #group, 2 do
        if group[i] == 'name' then name = group[i + 1] elseif group[i] == 'last-delivered-id' then id = group[i + 1] end
      end
      if name == ARGV[1] then last = id end
    end
    if last == nil then return redis.error_reply('NOGROUP no such consumer group') end
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    redis.call('XTRIM', KEYS[1], 'MINID', ms .. '-' .. (tonumber(seq) + 1))
    return 0
  end
  local bound = first[1][1]
  redis.call('XTRIM', KEYS[1], 'MINID', bound)
  local bms, bseq = string.match(bound, '^(%d+)-(%d+)$')
  local ids = above(tonumber(bms), tonumber(bseq), bound)
  if #ids > 0 then redis.call('XDEL', KEYS[1], unpack(ids)) end
  return #ids
end
"""

# KEYS: stream. ARGV: group, the ids just acknowledged joined by spaces. See _TRIM_DONE.
_DELETE_DONE = (
    _TRIM_DONE
    + """
return trim_done(function(bms, bseq)
  local above = {}
  for ms, seq in string.gmatch(ARGV[2] or '', '(%d+)-(%d+)') do
    local m, q = tonumber(ms), tonumber(seq)
    if m > bms or (m == bms and q >= bseq) then above[#above + 1] = ms .. '-' .. seq end
  end
  return above
end)
"""
)

# KEYS: stream, the partition's lease. ARGV: group, lease token, lease TTL ms, then the ids done. -1 (nothing written)
# when the lease is not held with that token; else the lease's TTL renewed, the ids acknowledged and every entry done
# deleted (_TRIM_DONE); returns how many the XDEL took. It only frees memory (and renews a TTL): allow-oom.
# An id with the bound's length and its '-' where the bound's is (its ms and seq then have the bound's digit counts:
# most of a commit's, as every ms has 13 digits and a seq one or two) is compared as a string: Redis writes ids
# without leading zeros, so the string order is the numbers' (Lua compares by strcoll: with the '-' aligned, digits
# decide in the C and the UTF-8 locales alike). Other ids are parsed. A commit's ids are the bulk of its Lua:
# string.match and two tonumber per id cost Redis about as much CPU as the XACK of them, the tests a fraction of it.
_COMMIT_HELD = (
    _TRIM_DONE
    + """
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -1 end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if #ARGV < 4 then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4))
return trim_done(function(bms, bseq, bound)
  local above = {}
  local size, dash = #bound, string.find(bound, '-', 1, true)
  for i = 4, #ARGV do
    local id = ARGV[i]
    if #id == size and string.byte(id, dash) == 45 then
      if id >= bound then above[#above + 1] = id end
    else
      local ms, seq = string.match(id, '^(%d+)-(%d+)$')
      local m, q = tonumber(ms), tonumber(seq)
      if m > bms or (m == bms and q >= bseq) then above[#above + 1] = id end
    end
  end
  return above
end)
"""
)
COMMIT_HELD = PipelineScript(_COMMIT_HELD)
"""The commit of entries done under a partition's lease, in one script on the partition's keys (one hash tag):
:func:`queue_commit_held`."""


def queue_commit_held(
    pipe: Any, stream: str, lease: tuple[str, str, int], entry_ids: Sequence[bytes]
) -> tuple[list[Any], list[Any]]:
    """Queue on ``pipe`` (a plain pipeline) the acknowledgement and deletion of ``entry_ids`` (as
    :func:`ack_and_delete`), done only while ``lease`` (key, token, TTL ms: the partition's) is held, whose TTL it
    renews, atomically: a drain that lost its lease commits nothing. Returns the script's keys and arguments, for
    :meth:`~worker.store.scripts.PipelineScript.answer` (its answer: -1 when the lease was not held)."""
    key, token, ttl_ms = lease
    keys: list[Any] = [stream, key]
    args: list[Any] = [GROUP, token, ttl_ms, *entry_ids]
    COMMIT_HELD.queue(pipe, keys, args)
    return keys, args


def ack_and_delete(pipe: Any, stream: str, entry_ids: Sequence[bytes]) -> None:
    """Queue, on the caller's MULTI pipeline, the XACK of entries that are done with and their deletion.

    The deletion is one script on the stream alone (the same hash tag: cluster-safe), inside the caller's MULTI so
    that an acknowledged entry never outlives it (the stream's length is the backlog): every entry that is done goes,
    the ones below the lowest entry not yet done by ``XTRIM MINID`` (a block at a time: a tenth of what one ``XDEL``
    per entry costs Redis), the rest by ``XDEL``. An entry is done once acknowledged; one not yet read (above the
    group's last-delivered-id) or pending (any consumer's) is never touched. The script goes as ``EVAL`` (a commit's
    ids outweigh its text, and a Redis restarted with an empty script cache still runs it), the ids as one argument
    (read only when an entry is still pending below them)."""
    if entry_ids:
        pipe.xack(stream, GROUP, *entry_ids)
        # execute_command: a cluster pipeline's eval() is not EVAL
        pipe.execute_command("EVAL", _DELETE_DONE, 1, stream, GROUP, b" ".join(entry_ids))


# KEYS: stream, retry items hash, retry due set. ARGV: group, n, n entry ids, then retry item ids.
# allow-oom: Redis runs it when full (noeviction), where it refuses every command queued in a MULTI; it only frees.
_FREE_DONE = """
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 3, 2 + n))
  redis.call('XDEL', KEYS[1], unpack(ARGV, 3, 2 + n))
end
if #ARGV > 2 + n then
  redis.call('HDEL', KEYS[2], unpack(ARGV, 3 + n))
  redis.call('ZREM', KEYS[3], unpack(ARGV, 3 + n))
end
return n
"""


def free_done(
    client: redis.Redis, stream: str, entry_ids: Sequence[bytes], retry_keys: tuple[str, str], retry_ids: Sequence[str]
) -> None:
    """Acknowledge and delete ``entry_ids`` and remove the finished retry items ``retry_ids``, atomically, with
    commands that only free memory (one script that Redis runs even at ``maxmemory``): the commit of delivered
    work when Redis is full, so that delivering frees memory."""
    if entry_ids or retry_ids:
        args: list[bytes | str | int] = [GROUP, len(entry_ids), *entry_ids, *retry_ids]
        eval_allow_oom(client, _FREE_DONE, [stream, *retry_keys], args)


def text(value: Any) -> str:
    """A Redis answer's name or id as text (bytes decoded, anything else as ``str``)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def id_order(entry_id: bytes | str) -> tuple[int, int]:
    """A stream id's order (``<ms>-<seq>``, compared as numbers)."""
    ms, _, seq = text(entry_id).partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """The relay's consumer group on one stream, as ``XINFO GROUPS`` tells it.

    ``exists`` is False when the stream or the group is not there yet (nothing read yet). ``lag`` is what Redis
    says is not yet read, or None when it cannot tell: shown for information only, never trusted (it is wrong
    after a Redis restart; see :class:`PartitionBacklog`)."""

    exists: bool
    lag: int | None = None
    pending: int = 0
    consumers: int = 0


def group_info(groups: Any) -> GroupInfo:
    """The relay's group in an ``XINFO GROUPS`` answer (a list of dicts, or an error value: no stream yet)."""
    if not isinstance(groups, list):
        return GroupInfo(exists=False)
    for group in groups:
        info = {text(key): value for key, value in group.items()}
        if text(info.get("name")) == GROUP:
            lag = info.get("lag")
            return GroupInfo(
                exists=True,
                lag=int(lag) if lag is not None else None,
                pending=int(info.get("pending") or 0),
                consumers=int(info.get("consumers") or 0),
            )
    return GroupInfo(exists=False)


@dataclass(frozen=True, slots=True)
class PartitionBacklog:
    """One partition's undelivered messages: ``length`` entries in its stream (``pending`` of them read and not
    yet acknowledged) and ``scheduled`` messages in its retry schedule. ``group``: the consumer group exists."""

    length: int
    pending: int
    scheduled: int
    group: bool

    @property
    def unread(self) -> int:
        """Entries no consumer has read yet."""
        return max(0, self.length - self.pending)

    @property
    def total(self) -> int:
        """Messages not yet delivered (the figure ingest's cap compares)."""
        return self.length + self.scheduled


BACKLOG_COMMANDS = 3
"""How many answers :func:`queue_backlog` adds to a pipeline per partition."""


def queue_backlog(pipe: Any, keys: Keys, partition: int) -> None:
    """Queue, on the caller's (sync or async, non-transactional) pipeline, what one partition's backlog is read
    from: ``XLEN`` and ``XINFO GROUPS`` of its stream, ``ZCARD`` of its retry schedule."""
    stream = keys.stream(partition)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    pipe.zcard(keys.retry_due(partition))


def read_backlog(answers: Sequence[Any]) -> PartitionBacklog:
    """One partition's backlog from the :data:`BACKLOG_COMMANDS` answers :func:`queue_backlog` queued (executed with
    ``raise_on_error=False``: a stream not created yet answers an error, read as empty). Raises a connection error
    found among them."""
    _raise_lost(answers)
    length, groups, scheduled = answers
    info = group_info(groups)
    return PartitionBacklog(
        length=length if isinstance(length, int) else 0,
        pending=info.pending,
        scheduled=scheduled if isinstance(scheduled, int) else 0,
        group=info.exists,
    )


UNREAD_COMMANDS = 2
"""How many answers :func:`queue_unread` adds to a pipeline per partition."""


def queue_unread(pipe: Any, keys: Keys, partition: int) -> None:
    """Queue, on the caller's non-transactional pipeline, what says whether one partition has unread entries (the
    ticker's look, :func:`read_unread`): ``XLEN`` of its stream and the ``XPENDING`` summary of the group, the
    pending count as :class:`PartitionBacklog` takes it from ``XINFO GROUPS``, in an answer that costs Redis and the
    worker less to make and to read (the retry schedule's size is not asked: only due retries make work)."""
    stream = keys.stream(partition)
    pipe.xlen(stream)
    pipe.xpending(stream, GROUP)


def read_unread(answers: Sequence[Any]) -> int:
    """One partition's unread entries (its length less its pending ones, as :attr:`PartitionBacklog.unread`) from
    the :data:`UNREAD_COMMANDS` answers :func:`queue_unread` queued (executed with ``raise_on_error=False``: a
    stream or group not created yet answers an error, read as none pending). Raises a connection error found among
    them."""
    _raise_lost(answers)
    length, summary = answers
    pending = summary.get("pending") if isinstance(summary, dict) else None  # (redis-py's form of the summary)
    return PartitionBacklog(
        length=length if isinstance(length, int) else 0,
        pending=pending if isinstance(pending, int) else 0,
        scheduled=0,
        group=isinstance(summary, dict),
    ).unread


def _raise_lost(answers: Sequence[Any]) -> None:
    """Raise the first connection error or timeout among a pipeline's answers (other errors are answers)."""
    for answer in answers:
        if isinstance(answer, redis.ConnectionError | redis.TimeoutError):
            raise answer


def read_backlogs(answers: Sequence[Any], partitions: int, offset: int = 0) -> list[PartitionBacklog]:
    """Every partition's backlog from answers queued by :func:`queue_backlog` for partitions 0..n-1 in order."""
    step = BACKLOG_COMMANDS
    return [read_backlog(answers[offset + step * p : offset + step * p + step]) for p in range(partitions)]


def measure_backlog(client: redis.Redis, keys: Keys, partitions: int) -> list[PartitionBacklog]:
    """Every partition's backlog, in one round trip (a synchronous client)."""
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        queue_backlog(pipe, keys, partition)
    return read_backlogs(pipe.execute(raise_on_error=False), partitions)


def prune_consumers(client: redis.Redis, keys: Keys, partitions: int, idle_s: float) -> int:
    """Forget group consumers that hold no pending entry and have been idle ``idle_s`` (restarted processes)."""
    pipe = client.pipeline(transaction=False)
    for partition in range(partitions):
        pipe.xinfo_consumers(keys.stream(partition), GROUP)
    answers: list[Any] = pipe.execute(raise_on_error=False)
    removed = 0
    for partition, consumers in enumerate(answers):
        if not isinstance(consumers, list):
            continue
        for consumer in consumers:
            if consumer.get("pending") == 0 and consumer.get("idle", 0) >= idle_s * 1000:
                # XGROUP DELCONSUMER drops only that consumer's pending entries: there are none
                removed += int(client.xgroup_delconsumer(keys.stream(partition), GROUP, consumer["name"]) == 0)
    return removed


def _mismatch(stored: bytes | str | None, partitions: int, keys: Keys) -> ConfigError | None:
    if stored is None:
        return None
    count = int(stored)
    if count == partitions:
        return None
    return ConfigError(
        f"CTRELAY_PARTITIONS is {partitions} but the relay's data in Redis (prefix {keys.prefix!r}) is laid out in "
        f"{count} partitions: start every process with CTRELAY_PARTITIONS={count}, or change the count on an empty "
        f"queue with `ctrelay partitions --set {partitions}` (README, Scaling)"
    )


def claim_partitions(client: redis.Redis, keys: Keys, partitions: int) -> None:
    """Store ``partitions`` as the relay's count if none is stored; raise ConfigError if another one is."""
    if client.set(keys.partitions(), partitions, nx=True):
        return
    error = _mismatch(client.get(keys.partitions()), partitions, keys)
    if error is not None:
        raise error


def check_partitions(client: redis.Redis, keys: Keys, partitions: int) -> None:
    """:func:`claim_partitions` for a reader that writes nothing (``ctrelay status``): compare only."""
    error = _mismatch(client.get(keys.partitions()), partitions, keys)
    if error is not None:
        raise error


async def claim_partitions_async(client: Any, keys: Keys, partitions: int) -> None:
    """:func:`claim_partitions` with an asynchronous client (ingest)."""
    if await client.set(keys.partitions(), partitions, nx=True):
        return
    error = _mismatch(await client.get(keys.partitions()), partitions, keys)
    if error is not None:
        raise error


def change_partitions(client: redis.Redis, keys: Keys, partitions: int) -> int:
    """Store a new partition count; only while every stream and retry schedule of the stored count is empty and no
    drain holds a lease (stop ingest and the workers first). Returns the previous count; raises ConfigError."""
    raw: Any = client.get(keys.partitions())
    old = int(raw) if raw is not None else partitions
    undelivered = sum(part.total for part in measure_backlog(client, keys, old))
    leased = sum(int(client.exists(keys.lease(p))) for p in range(old))
    if undelivered or leased:
        raise ConfigError(
            f"the queue is not empty ({undelivered} undelivered messages, {leased} drains holding a lease in {old} "
            "partitions): stop ingest, let the workers deliver everything (`ctrelay status`: backlog 0), stop them, "
            "then change the count"
        )
    client.set(keys.partitions(), partitions)
    return old
