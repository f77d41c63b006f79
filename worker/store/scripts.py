"""Lua scripts: run on pipelines in every mode (:func:`on_pipeline`), and run even at ``maxmemory``.

A registered script queued on a pipeline runs as ``EVALSHA``; redis-py's plain pipeline loads it first where the
server lacks it, but a cluster pipeline cannot (after a node restart its script cache is empty: ``NOSCRIPT``), so on a
cluster pipeline :func:`on_pipeline` queues ``EVAL`` with the source instead.

Scripts that Redis runs even at ``maxmemory`` (``#!lua flags=allow-oom``), where it refuses ordinary writes:

Delivering is what frees memory when Redis is full, so the few bytes a drain needs to start and go on (its lease,
an upload slot, the cap) are written by such scripts. A server that knows no script flags (Redis before 7, the
in-process fakeredis of ``ctrelay dev``) cannot compile the flag line: the script then runs without it (no such
server enforces ``maxmemory`` the way Redis 7 does).
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from worker.store.connections import is_cluster

ALLOW_OOM = "#!lua flags=allow-oom\n"


def _no_flags(exc: redis.ResponseError) -> bool:
    return "near '#'" in str(exc)


class OomScript:
    """A registered script, run with ``allow-oom`` where the server supports script flags."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self._flagged = client.register_script(ALLOW_OOM + source)
        self._plain = client.register_script(source)
        self._flags = True

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        if self._flags:
            try:
                return self._flagged(keys=keys, args=args, client=client)
            except redis.ResponseError as exc:
                if not _no_flags(exc):
                    raise
                self._flags = False
        return self._plain(keys=keys, args=args, client=client)


_SCRIPTS: weakref.WeakKeyDictionary[Any, dict[str, OomScript]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def script(client: Any, source: str) -> OomScript:
    """The :class:`OomScript` of ``source`` for ``client``, made once per client: it runs by ``EVALSHA`` (the text
    goes only when the server does not know it yet: after a restart, or the first time)."""
    with _LOCK:
        scripts = _SCRIPTS.setdefault(client, {})
        found = scripts.get(source)
        if found is None:
            found = scripts[source] = OomScript(client, source)
        return found


def eval_allow_oom(client: redis.Redis, source: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    """Run ``source`` with ``allow-oom`` where the server supports script flags (``EVALSHA``, see :func:`script`)."""
    return script(client, source)(keys=keys, args=args)


class PipelineScript:
    """A script queued by ``EVALSHA`` on a plain pipeline among other commands (one round trip, none more: redis-py's
    own pipeline scripts ask ``SCRIPT EXISTS`` first, a round trip of its own each time), with ``allow-oom`` where the
    server supports script flags. Where Redis answers ``NOSCRIPT`` (a restart, a failover, the first call),
    :meth:`answer` runs it again at once by ``EVAL`` of its source, which loads it for the next calls."""

    def __init__(self, source: str) -> None:
        self.plain = source
        self.source = ALLOW_OOM + source
        self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()  # noqa: S324 (Redis names scripts by SHA-1)

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Queue the script on ``pipe`` (a plain pipeline, transactional or not)."""
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def answer(self, client: Any, answer: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """The script's answer, from what the pipeline answered for it (``execute(raise_on_error=False)``): run again
        by ``EVAL`` on ``client`` after ``NOSCRIPT``; an error reply raises."""
        if isinstance(answer, NoScriptError):
            try:
                return client.execute_command("EVAL", self.source, len(keys), *keys, *args)
            except redis.ResponseError as exc:
                if not _no_flags(exc):
                    raise
                self.source = self.plain
                self.sha = hashlib.sha1(self.source.encode("utf-8")).hexdigest()  # noqa: S324
                return client.execute_command("EVAL", self.source, len(keys), *keys, *args)
        if isinstance(answer, Exception):
            raise answer
        return answer


def on_pipeline(script: Script, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue ``script`` on ``pipe`` (a plain or a cluster pipeline, transactional or not): ``EVALSHA`` where the
    pipeline loads missing scripts itself, ``EVAL`` of the source on a cluster pipeline."""
    if is_cluster(pipe):
        pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)  # a cluster pipeline's eval() is not EVAL
    else:
        script(keys=keys, args=args, client=pipe)
