"""`tongban sms`: look into the SMS gateway's outbox (the sandbox's; real providers have none)."""

from __future__ import annotations

from datetime import datetime

import httpx
import typer
from rich.table import Table

from core.clock import for_display
from scripts.common import console, fail, load_settings

app = typer.Typer(help="SMS gateway: read the sandbox outbox.", no_args_is_help=True)


@app.command("outbox")
def outbox_command(
    phone: str | None = typer.Option(None, help="only messages to this number"),
    limit: int = typer.Option(20, min=1, max=1000, help="at most this many, newest first"),
) -> None:
    """Print the messages the gateway has sent, newest first [TONGBAN_SMS_GATEWAY_URL]."""
    settings = load_settings()
    base_url = settings.sms_gateway_url.rstrip("/")
    params: dict[str, str | int] = {"limit": limit}
    if phone:
        params["phone"] = phone
    try:
        response = httpx.get(base_url + "/sms/outbox", params=params, timeout=5.0)
    except httpx.HTTPError as exc:
        fail(
            f"SMS gateway at {base_url} is not reachable ({type(exc).__name__}); start it: tongban sandbox start"
        )
    if response.status_code != 200:
        try:
            message = str(response.json().get("message", ""))
        except ValueError:
            message = ""
        fail(
            f"SMS gateway at {base_url} answered {response.status_code}: {message or response.reason_phrase}"
        )
    messages = response.json()["messages"]
    table = Table(title=f"SMS outbox ({len(messages)}, newest first)")
    for column in ("sent (Asia/Shanghai)", "phone", "template", "text", "message id"):
        table.add_column(column, overflow="fold")
    for message in messages:
        sent_at = for_display(datetime.fromisoformat(message["sent_at"]))
        table.add_row(sent_at, message["phone"], message["template"], message["text"], message["message_id"])
    console.print(table)
