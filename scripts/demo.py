"""``make demo``: the README quickstart, unattended, against a throwaway relay and database.

Starts a relay on a free loopback port in a temporary directory, lets an admin create two
cells and a channel, enrolls both cells, sends one message in each precedence while the
recipient is offline, lets the recipient listen (they arrive FLASH first) and, while its
listen runs, use its other commands beside it (they hand their work to the listen), shows
the sender's outbox moving to delivered and read and its history, and compares safety
numbers. Every command is printed
with its output, as a person would type it. Everything is removed afterwards.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIAISON = str(Path(sys.executable).with_name("liaison"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def run(*args: str, env: dict[str, str], quiet: bool = False) -> str:
    shown = " ".join(shlex.quote(a) for a in ("liaison", *args))
    print(f"\n$ {shown}")
    result = subprocess.run(
        [LIAISON, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    out = result.stdout.rstrip()
    if out and not quiet:
        print(out)
    if result.stderr.strip():
        print(result.stderr.rstrip())
    if result.returncode != 0:
        raise SystemExit(f"demo failed: `{shown}` exited with {result.returncode}")
    return out


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="liaison-demo-") as tmp:
        root = Path(tmp)
        port = free_port()
        server = f"http://127.0.0.1:{port}"
        env = dict(os.environ, LIAISON_SERVER=server)
        print(f"== a throwaway relay on {server} (state in {root})")
        relay = subprocess.Popen(
            [
                LIAISON,
                "server",
                "run",
                "--port",
                str(port),
                "--database",
                f"sqlite+aiosqlite:///{root / 'relay.db'}",
                "--key-file",
                str(root / "relay.key"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        try:
            token = ""
            assert relay.stdout is not None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = relay.stdout.readline()
                if not line:
                    break
                print(f"relay | {line.rstrip()}")
                if line.startswith("admin token: "):
                    token = line.split(": ", 1)[1].strip()
                if "Uvicorn running" in line:
                    break
            if not token:
                raise SystemExit("demo failed: the relay did not start")
            env["LIAISON_ADMIN_TOKEN"] = token

            print("\n== the admin provisions two cells and a channel")
            codes = {}
            for name in ("fr-paris", "de-berlin"):
                out = run("admin", "--json", "cell", "add", name, env=env, quiet=True)
                codes[name] = json.loads(out)["enrollment_code"]
                print(f"cell {name} created; enrollment code {codes[name][:16]}... (out of band)")
            run("admin", "channel", "add", "fr-paris", "de-berlin", env=env)

            print("\n== each cell enrolls from its own machine (keys never leave it)")
            homes = {name: str(root / name) for name in codes}
            for name, code in codes.items():
                run("cell", "--home", homes[name], "enroll", "--code", code, env=env)

            print("\n== fr-paris sends in all four precedences while de-berlin is offline")
            for precedence, text in (
                ("routine", "Weekly liaison report attached."),
                ("priority", "Request update on convoy schedule."),
                ("flash", "Airspace closure in sector 4 effective now."),
                ("immediate", "Liaison officer arriving 1400Z."),
            ):
                run(
                    "cell",
                    "--home",
                    homes["fr-paris"],
                    "send",
                    "de-berlin",
                    text,
                    "--precedence",
                    precedence,
                    "--marking",
                    "NATO RESTRICTED",
                    env=env,
                )

            print("\n== de-berlin comes online and listens: FLASH first, then IMMEDIATE, ...")
            listen_args = ("cell", "--home", homes["de-berlin"], "listen", "--count", "5",
                           "--timeout", "60")  # fmt: skip
            print(f"\n$ {' '.join(shlex.quote(a) for a in ('liaison', *listen_args))} &")
            listener = subprocess.Popen(
                [LIAISON, *listen_args], env=env, stdout=subprocess.PIPE, text=True
            )
            assert listener.stdout is not None
            for _ in range(4):
                print(f"listen | {listener.stdout.readline().rstrip()}")

            print("\n== while listen runs, de-berlin's other commands work beside it")
            run("cell", "--home", homes["de-berlin"], "send", "fr-paris", "Received, thank you.",
                env=env)  # fmt: skip
            run("cell", "--home", homes["de-berlin"], "peers", env=env)
            run("cell", "--home", homes["fr-paris"], "send", "de-berlin", "One more, live.",
                env=env)  # fmt: skip
            print(f"listen | {listener.stdout.readline().rstrip()}")
            if listener.wait(60) != 0:
                raise SystemExit(f"demo failed: listen exited with {listener.returncode}")

            print("\n== fr-paris reconnects: the receipts move its outbox to read")
            run("cell", "--home", homes["fr-paris"], "peers", env=env)
            run("cell", "--home", homes["fr-paris"], "outbox", env=env)
            run("cell", "--home", homes["fr-paris"], "history", env=env)

            print("\n== both operators compare safety numbers out of band")
            a = run("cell", "--home", homes["fr-paris"], "safety-number", "de-berlin", env=env)
            b = run("cell", "--home", homes["de-berlin"], "safety-number", "fr-paris", env=env)
            print("\nthe numbers match" if a == b else "\nTHE NUMBERS DIFFER")
            run("cell", "--home", homes["fr-paris"], "verify", "de-berlin", env=env)
            if a != b:
                raise SystemExit("demo failed: safety numbers differ")
            print("\n== demo complete")
        finally:
            relay.send_signal(signal.SIGINT)
            try:
                relay.wait(10)
            except subprocess.TimeoutExpired:
                relay.kill()


if __name__ == "__main__":
    main()
