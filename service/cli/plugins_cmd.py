"""``ctdd plugins list [--config F] [--json]``: every plugin the service would load, with the hooks it
implements, the distribution that ships it and its version, and the stores it applies to
(``[plugins.<name>] stores``; every store otherwise).

Loading the plugins is what ``ctdd serve`` does at start-up, so a plugin that cannot be imported, implements a
misspelt hook or is scoped to unknown stores makes this command fail the same way (status 2, the plugin named).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Callable

from ctdd.cli.loading import load_without_credentials


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``ctdd plugins list`` to the subcommands ``sub``."""
    plugins = sub.add_parser("plugins", help="the plugins the service loads")
    plugins_sub = plugins.add_subparsers(dest="plugins_command", required=True)
    listing = plugins_sub.add_parser("list", help="every plugin with its hooks, distribution, version and stores")
    common(listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per plugin, in a JSON array")
    listing.set_defaults(func=list_plugins, listen=None)


def list_plugins(args: argparse.Namespace) -> int:
    from ctdd.hooks.manager import create_plugin_manager

    settings = load_without_credentials(args)
    infos = create_plugin_manager(settings=settings).describe()
    if args.json:
        print(json.dumps([asdict(info) for info in infos], indent=2))
        return 0
    for info in infos:
        origin = f"{info.distribution} {info.version}" if info.distribution else "registered in code"
        stores = ", ".join(info.stores) if info.stores is not None else "every store"
        print(f"{info.name}{' (bundled)' if info.bundled else ''}: {origin}")
        print(f"  hooks:  {', '.join(info.hooks) or '-'}")
        print(f"  stores: {stores}")
    return 0
