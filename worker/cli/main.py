"""``ctrelay``: the one command line of the relay.

Each subcommand is defined in the module that owns its work and registered here; heavy imports
(uvicorn, Celery) happen inside the commands, so ``ctrelay transform`` starts fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from worker.cli.context import group, handle_interrupts

app = group("ctrelay", "Self-hosted Segment → CleverTap relay.")


@app.callback()
def _root() -> None:
    """Self-hosted Segment → CleverTap relay."""
    handle_interrupts()  # SIGINT and SIGTERM stop any command cleanly, even when SIGINT was ignored at start


from worker.cli.sandbox import sandbox as _sandbox  # noqa: E402  (CleverTap sandbox; loads its server lazily)

app.command("sandbox")(_sandbox)


@app.command("ingest")
def _ingest(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    workers: int = typer.Option(1, min=1, help="uvicorn worker processes sharing the port"),
    ssl_certfile: Annotated[
        Path | None, typer.Option(help="serve HTTPS: the certificate (PEM, chain included)")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="serve HTTPS: the certificate's private key (PEM)")] = None,
) -> None:
    """Serve Segment's HTTP Tracking API: validate, deduplicate, enqueue into the Redis streams."""
    from ingest.serve import serve

    serve(host, port, workers, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)


from worker.cli.transform import transform_command as _transform  # noqa: E402  (transform preview; imports lazily)

app.command("transform")(_transform)


from worker.cli.dlq import dlq as _dlq  # noqa: E402  (dead letters; heavy imports inside its commands)

app.add_typer(_dlq, name="dlq")

from worker.cli.users import users as _users  # noqa: E402  (user deletion; heavy imports inside its commands)

app.add_typer(_users, name="users")


@app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def _worker(ctx: typer.Context) -> None:
    """Deliver: drain the streams into CleverTap uploads (a Celery worker; extra options go to Celery)."""
    from worker.cli.worker import run_worker

    run_worker(list(ctx.args))


@app.command("flower", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def _flower(ctx: typer.Context) -> None:
    """Monitor the workers with Flower (Celery's web UI) on the relay's Celery app; extra options go to Flower."""
    from worker.cli.flower import run_flower

    raise typer.Exit(run_flower(list(ctx.args)))


@app.command("dev")
def _dev(
    port: int = typer.Option(8000, help="ingest port (0: any free port; taken: ctrelay dev says so and stops)"),
    sandbox_port: int = typer.Option(8900, help="sandbox CleverTap port (0: any free port)"),
    metrics_port: int = typer.Option(9108, help="worker metrics port (0: any free port)"),
    write_key: str = typer.Option("wk_dev", help="the development write key"),
    redis_server: bool = typer.Option(True, help="embed the redis-server binary when on the PATH (else fakeredis)"),
    *,
    destinations: Annotated[
        Path | None,
        typer.Option(help="deliver to these destinations (real CleverTap accounts) too; the sandbox stays at wk_dev"),
    ] = None,
) -> None:
    """Run the whole relay locally (Redis, sandbox CleverTap, worker, ingest) until Ctrl-C."""
    from worker.cli.dev import main as run_dev

    ports = {"port": port, "sandbox_port": sandbox_port, "metrics_port": metrics_port}
    code = run_dev(**ports, write_key=write_key, redis_binary=redis_server, destinations=destinations)
    raise typer.Exit(code)


from worker.cli.check import check_command as _check  # noqa: E402  (settings, Redis and CleverTap credentials)

app.command("check")(_check)


@app.command("partitions")
def _partitions(
    new: int | None = typer.Option(None, "--set", min=1, max=4096, help="store this count (only on an empty queue)"),
) -> None:
    """Show the partition count stored in Redis; --set changes it once everything is delivered and stopped."""
    from worker.cli.partitions import partitions_command

    partitions_command(new)


@app.command("migrate")
def _migrate() -> None:
    """Move the data of a relay upgraded from the layout before hash tags (stop ingest and the workers first)."""
    from worker.cli.migrate import migrate_command

    migrate_command()


@app.command("status")
def _status(
    json_output: bool = typer.Option(False, "--json", help="one JSON object instead of tables"),
    watch: float = typer.Option(0.0, min=0.0, help="refresh every this many seconds (0: once)"),
    show_all: bool = typer.Option(False, "--all", help="list idle partitions too"),
) -> None:
    """Show queue lag and pending per partition, uploads in flight per account, retries and dead letters."""
    from worker.cli.status import status_command

    raise typer.Exit(status_command(json_output, watch, show_all))
