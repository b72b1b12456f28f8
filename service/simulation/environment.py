"""The world a simulation runs in: the settings (from ``--config`` or a default store), a Dotdigital sandbox per
account with the configured programs (all Active) and lists, a commercetools fake per commercetools client,
and a fresh SQLite database in a temporary folder. Nothing here reaches a real Dotdigital account, a real
commercetools project, or the database of a configuration: every URL and credential is replaced."""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ctdd.config import Settings
from ctdd.config.loading import settings_from_mapping
from ctdd.config.sources import read_toml, table_variable
from ctdd.testing.commercetools_fake import FakeCommercetools
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox

#: The configuration without ``--config``: one store, one account, one commercetools project, an
#: abandoned-cart program (one hour after the cart's last change) and a first-purchase program.
DEFAULT_CONFIG: dict[str, Any] = {
    "accounts": {"sandbox": {}},
    "commercetools": {"main": {"project_key": "shop"}},
    "stores": {
        "default": {
            "account": "sandbox",
            "commercetools": "main",
            "lists": {"customers": 1, "newsletter": 2, "sms": 3},
            "email_list": "newsletter",
            "product_url_template": "https://shop.example.com/{locale}/p/{slug}",
            "cart_url_template": "https://shop.example.com/{locale}/cart/{cart_id}",
            "programs": {
                "abandoned_cart": {"program": 101, "delay_minutes": 60},
                "post_purchase_first": {"program": 102, "delay_minutes": 1440},
            },
        }
    },
}

#: Timing settings of the pieces that wait in real time (poll intervals of bulk imports): short, so that a
#: simulated day takes seconds. Virtual delays (timers, retries, the enrolment budget) are not touched.
_REAL_TIME_SETTINGS = {
    "dispatcher": {"bulk_poll_min_seconds": 0.01, "bulk_poll_max_seconds": 0.05, "settle_interval_seconds": 0},
    "backsync": {"enabled": False},
}
_SECRET_KEYS = {"accounts": ("password_env", "password_file", "base_url", "discover_endpoint"),
                "commercetools": ("client_secret_env", "client_secret_file", "api_url", "auth_url")}


@dataclass
class Environment:
    settings: Settings
    sandboxes: dict[str, DotdigitalSandbox]  # account name -> its sandbox
    fakes: dict[str, FakeCommercetools]  # commercetools client name -> its fake
    directory: tempfile.TemporaryDirectory
    config_source: str
    #: program id -> (account, store, kind) for the timeline
    programs: dict[tuple[str, int], tuple[str, str]] = field(default_factory=dict)

    def fake_for_store(self, store_key: str) -> FakeCommercetools | None:
        store = self.settings.store(store_key)
        if store is None or store.commercetools is None:
            return None
        return self.fakes.get(store.commercetools)

    def close(self) -> None:
        for server in [*self.sandboxes.values(), *self.fakes.values()]:
            server.stop()
        self.directory.cleanup()


def build_environment(config: str | Path | None, clock) -> Environment:
    """Start the sandboxes and fakes of ``config`` (None: :data:`DEFAULT_CONFIG`) and load the settings that
    point at them; the sandboxes read ``clock``."""
    raw = copy.deepcopy(read_toml(config) if config else DEFAULT_CONFIG)
    source = str(config) if config else "the built-in default configuration"
    directory = tempfile.TemporaryDirectory(prefix="ctdd-simulate-", dir=_memory_folder())
    sandboxes: dict[str, DotdigitalSandbox] = {}
    fakes: dict[str, FakeCommercetools] = {}
    env: dict[str, str] = {}
    try:
        for name, table in (raw.get("accounts") or {}).items():
            sandbox = DotdigitalSandbox(account_id=len(sandboxes) + 1).start()
            sandbox.clock = clock
            sandbox.import_delay_seconds = 0
            sandboxes[name] = sandbox
            table = _without(table, _SECRET_KEYS["accounts"])
            table.update(base_url=sandbox.base_url, discover_endpoint=False)
            raw["accounts"][name] = table
            env[table_variable("accounts", name, "api_user")] = sandbox.api_user
            env[table_variable("accounts", name, "password")] = sandbox.password
            table.pop("api_user", None)
        for name, table in (raw.get("commercetools") or {}).items():
            fake = FakeCommercetools(project_key=table.get("project_key") or name).start()
            fakes[name] = fake
            table = _without(table, _SECRET_KEYS["commercetools"])
            table.update(api_url=fake.base_url, auth_url=fake.base_url)
            table.pop("client_id", None)
            raw["commercetools"][name] = table
            env[table_variable("commercetools", name, "client_id")] = fake.client_id
            env[table_variable("commercetools", name, "client_secret")] = fake.client_secret
        service = dict(raw.get("service") or {})
        service.update(database_url=f"sqlite:///{Path(directory.name) / 'simulation.db'}", listen="127.0.0.1:0")
        raw["service"] = service
        for section, values in _REAL_TIME_SETTINGS.items():
            raw[section] = {**(raw.get(section) or {}), **values}
        settings = settings_from_mapping(raw, env=env, source=config)
        environment = Environment(settings, sandboxes, fakes, directory, source)
        _provision(environment)
        return environment
    except BaseException:
        for server in [*sandboxes.values(), *fakes.values()]:
            server.stop()
        directory.cleanup()
        raise


def _memory_folder() -> str | None:
    """A folder in memory (Linux: /dev/shm) for the throwaway database, where a commit costs no disk flush;
    None: the default temporary folder."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def _without(table: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    table = dict(table or {})
    for key in keys:
        table.pop(key, None)
    return table


def _provision(environment: Environment) -> None:
    """What an account has before the service runs there: the lists the stores name by id, and every
    configured program, Active (lists by name, data fields and collections come from ``ctdd dotdigital
    setup``, which the runner calls)."""
    for store in environment.settings.stores.values():
        sandbox = environment.sandboxes[store.account]
        books = {b["id"] for b in sandbox.address_books}
        for list_key, book_id in store.lists.items():
            if book_id not in books:
                sandbox.add_address_book(f"{store.key} {list_key}", book_id=book_id)
                books.add(book_id)
        for kind, program in store.programs.items():
            start_list = store.lists.get(program.trigger_list) if program.trigger_list else None
            known = {p["id"]: p["name"] for p in sandbox.programs}
            if isinstance(program.program, int):
                program_id = program.program
                if program_id not in known:
                    sandbox.add_program(f"{store.key} {kind}", "Active", program_id=program_id,
                                        start_list_id=start_list)
            else:
                program_id = next((i for i, n in known.items() if n.casefold() == program.program.casefold()), None)
                if program_id is None:
                    program_id = sandbox.add_program(program.program, "Active", start_list_id=start_list)
            environment.programs[(store.account, program_id)] = (store.key, kind)
