"""``liaison cell relocate``: point the cell at its relay's new address (see ``relocate.py``).
Registered on the ``cell`` group by ``liaison.client.cli``."""

from __future__ import annotations

import json

import click

from .cell_cli import Context
from .relocate import Relocated, relocate

__all__ = ["relocate_command"]


@click.command("relocate")
@click.option("--server", required=True, help="the relay's new URL")
@click.option(
    "--code",
    default=None,
    help="a new enrollment code from the new relay's admin, if it is another relay",
)
@click.pass_obj
def relocate_command(ctx: Context, server: str, code: str | None) -> None:
    """Change the relay URL this cell uses. The pinned relay key must stay the same (the same
    relay moved), unless --code gives an enrollment code of the relay at the new URL: the cell
    then enrolls its existing keys there and pins that relay instead. Anything else is
    refused and nothing changes. Stop a running listen of this home first."""

    async def go(passphrase: str | None) -> Relocated:
        return await relocate(ctx.home, server=server, code=code, passphrase=passphrase)

    moved = ctx.run(go)
    if ctx.json:
        click.echo(json.dumps({
            "server": moved.server, "relay_fingerprint": moved.relay_fingerprint,
            "same_relay": moved.same_relay, "cell_id": moved.cell_id, "name": moved.name,
        }, sort_keys=True))  # fmt: skip
    elif moved.same_relay:
        click.echo(f"relocated to {moved.server} (same relay key {moved.relay_fingerprint})")
    else:
        click.echo(
            f"relocated to {moved.server}: enrolled as {moved.name} ({moved.cell_id}) with the "
            f"new relay key {moved.relay_fingerprint}; ask its admin to pair this cell again"
        )
