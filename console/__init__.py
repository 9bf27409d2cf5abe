"""The ``liaison`` console script's entry point, kept apart from the CLI it runs.

Importing the CLI takes a noticeable fraction of a second (click, httpx, the crypto
libraries). A Ctrl-C in that time would otherwise end in a ``KeyboardInterrupt`` traceback from
the middle of some import: here it ends the program quietly with exit status 130, like a
Ctrl-C at any later moment (``liaison.client.cli`` handles those). This module imports nothing
but ``sys`` before the ``try``.
"""

import sys

__all__ = ["main"]

EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        from liaison.client.cli import main as cli

        cli(prog_name="liaison")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
