"""``ctdd config check [--config F] [--sandbox] [--format toml|json]``: load the configuration as ``ctdd serve``
would (file, ``CTDD_*`` variables, flags) and print the effective settings with every secret masked.

Exit status 0 when the configuration is valid; otherwise the one-line error and status 2 (``ctdd.cli.main``).
"""

from __future__ import annotations

import argparse
import os
from typing import Callable

from ctdd.cli.loading import load, load_without_credentials, with_sandbox
from ctdd.config.render import render_json, render_toml


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``ctdd config check`` to the subcommands ``sub``; ``common`` adds --config and the shared flags."""
    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate the configuration and print the effective settings "
                                                "(secrets masked)")
    common(check)
    check.add_argument("--listen", default=None, help="HOST:PORT, as for `ctdd serve` (env CTDD_LISTEN)")
    check.add_argument("--sandbox", action="store_true",
                       help="as `ctdd serve --sandbox`: accounts need no credentials and point at the sandbox")
    check.add_argument("--format", choices=("toml", "json"), default="toml", help="output format (default toml)")
    check.set_defaults(func=check_config)


def check_config(args: argparse.Namespace) -> int:
    if args.sandbox:
        settings = with_sandbox(load_without_credentials(args), _SandboxStandIn())
    else:
        settings = load(args)
    if args.format == "json":
        print(render_json(settings))
    else:
        source = args.config or os.environ.get("CTDD_CONFIG")
        print(f"# effective configuration{f' of {source}' if source else ''}: file, then CTDD_* variables, then "
              "flags; secrets masked")
        if args.sandbox:
            print("# --sandbox: every account points at the bundled Dotdigital sandbox (its port is chosen at start)")
        print(render_toml(settings), end="")
    return 0


class _SandboxStandIn:
    """What ``with_sandbox`` needs of a running sandbox, without starting one: ``ctdd serve --sandbox``
    picks the port when it starts the sandbox."""

    api_user = "sandbox"
    password = "sandbox"
    base_url = "http://127.0.0.1"
    address_books: list[dict] = []

    def add_data_field(self, name: str, kind: str) -> None:
        pass

    def add_address_book(self, name: str) -> None:
        pass
