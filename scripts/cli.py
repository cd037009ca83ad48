"""The `tongban` ops CLI."""

from __future__ import annotations

import typer

from core.logging import configure as configure_logging
from core.migrate import head
from scripts import (
    audit_cmd,
    bench_cmd,
    checkpoints_cmd,
    db_cmd,
    demo,
    health_cmd,
    keys_cmd,
    miniapps_cmd,
    onecode_cmd,
    pass_cmd,
    sandbox_cmd,
    serve,
    sessions_cmd,
    sms_cmd,
    staff_cmd,
    terminals_cmd,
    trust_cmd,
    users_cmd,
    validator_cmd,
)
from scripts.common import console, fail, load_settings, stores_ready

app = typer.Typer(
    help="Tongban ops: serve, worker, db, keys, demo data, sandbox providers.", no_args_is_help=True
)
app.add_typer(db_cmd.app, name="db")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(demo.app, name="demo")
app.add_typer(sandbox_cmd.app, name="sandbox")
app.add_typer(sms_cmd.app, name="sms")
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(users_cmd.app, name="users")
app.add_typer(sessions_cmd.app, name="sessions")
app.add_typer(audit_cmd.app, name="audit")
app.add_typer(miniapps_cmd.app, name="miniapps")
app.add_typer(staff_cmd.app, name="staff")
app.add_typer(health_cmd.app, name="health")
app.add_typer(pass_cmd.app, name="pass")
app.add_typer(checkpoints_cmd.app, name="checkpoints")
app.add_typer(trust_cmd.app, name="trust")
app.add_typer(onecode_cmd.app, name="onecode")
app.add_typer(terminals_cmd.app, name="terminals")
app.add_typer(validator_cmd.app, name="validator")
health_cmd.app.add_typer(trust_cmd.signer_app, name="signer")


@app.command("serve")
def serve_command(
    host: str | None = typer.Option(None, help="bind address [TONGBAN_HOST]"),
    port: int | None = typer.Option(None, help="port [TONGBAN_PORT]"),
    workers: int | None = typer.Option(None, help="worker processes [TONGBAN_WORKERS]"),
    server: str | None = typer.Option(None, help="granian or uvicorn [TONGBAN_SERVER]"),
) -> None:
    """Run the HTTP API (embedded PostgreSQL/Valkey when no URLs are configured)."""
    settings, embedded = stores_ready()
    try:
        serve.prepare(settings)
        serve.run_server(
            settings,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers or settings.workers,
            server=server or settings.server,
        )
    finally:
        embedded.stop()


@app.command("up")
def up_command(
    port: int | None = typer.Option(None, help="port [TONGBAN_PORT]"),
    workers: int | None = typer.Option(None, help="worker processes [TONGBAN_WORKERS]"),
) -> None:
    """Everything for a try-out: stores, migrations, demo data, sandbox providers, job worker and the API."""
    settings, embedded = stores_ready()
    children = []
    try:
        serve.prepare(settings)
        children.append(serve.spawn(["sandbox", "start"]))
        children.append(serve.spawn(["worker"]))
        serve.wait_for_sandbox(settings)
        demo.seed_now(settings)
        serve.run_server(
            settings,
            host=settings.host,
            port=port or settings.port,
            workers=workers or settings.workers,
            server=settings.server,
        )
    finally:
        serve.stop_children(children)
        embedded.stop()


@app.command("worker")
def worker_command() -> None:
    """Run the background job worker (arq) and the outbox relay."""
    from scripts.worker import run_worker

    settings, embedded = stores_ready()
    try:
        run_worker(settings)
    finally:
        embedded.stop()


@app.command("version")
def version_command() -> None:
    """Print the version and the latest migration."""
    from api.app import VERSION

    load_settings()
    console.print(f"tongban {VERSION}, schema head {head()}")


def main() -> None:
    # CLI output is tables for people; log lines (JSON, on stderr) only for warnings and errors.
    configure_logging("warning", json=True)
    try:
        app()
    except KeyboardInterrupt:
        fail("interrupted", 130)


if __name__ == "__main__":
    main()
