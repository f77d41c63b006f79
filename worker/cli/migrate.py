"""``ctrelay migrate``: move a relay's data from the layout before hash tags to today's (:mod:`worker.store.migrate`).

Exit status: 0 done (something moved, or nothing was left to move), 2 refused (a worker holds a lease, cluster mode,
bad settings) or Redis failed.
"""

from __future__ import annotations

import os

import typer

from worker.cli.context import fail, session


def migrate_command() -> None:
    """Move streams (with their pending entries), retry schedules, dead letters, suppressions, caps and dedup
    markers; print what moved. Run it with ingest and the workers stopped; running it again moves nothing."""
    from worker.core.destinations import load_destinations
    from worker.store.connections import Target
    from worker.store.migrate import migrate

    with session() as ctx:
        if Target.of(ctx.settings).cluster:
            raise fail(
                "ctrelay migrate runs on the Redis the previous release used (standalone or Sentinel): that release "
                "never ran on a Redis Cluster; to move a relay onto a cluster, drain it (runbook, 'Redis Cluster')"
            )
        stored = ctx.client.get(ctx.keys.partitions())
        partitions = int(stored) if stored is not None else ctx.settings.partitions
        # the destinations' write keys tell an old dedup marker's write key from its messageId when either holds a ':'
        file = ctx.settings.destinations
        write_keys = list(load_destinations(file, env=os.environ, require_passcode=False)) if file.exists() else []
        done = migrate(ctx.client, ctx.keys, partitions, ctx.settings.dedup_window, write_keys)
        for line in done.lines():
            typer.echo(line)
        typer.echo("migrated" if done.moved_anything else "nothing to migrate: the data is in today's layout")
