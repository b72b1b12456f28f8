"""How the commands load their settings: the configuration file, the environment and the flags, and the
sandbox mode that points every account at the bundled Dotdigital sandbox."""

from __future__ import annotations

import os

from ctdd.config import AccountConfig, ConfigError, Settings, StoreConfig, load_settings, replace
from ctdd.config.sources import env_key

SANDBOX_ACCOUNT = "sandbox"
SANDBOX_STORE = "default"


def _overrides(args) -> dict:
    """The flags that override settings (None: not given)."""
    return {key: getattr(args, key, None) for key in ("listen", "database_url", "log_level", "insecure")}


def _use_log_level(settings: Settings) -> Settings:
    """Apply the effective log level (flag > CTDD_LOG_LEVEL > [service] log_level > INFO) and log format
    (CTDD_LOG_FORMAT > [service] log_format), and register the configured secrets for log redaction."""
    from ctdd.logging_setup import apply_settings

    apply_settings(settings)
    return settings


def load(args) -> Settings:
    return _use_log_level(load_settings(args.config, overrides=_overrides(args)))


def with_sandbox(settings: Settings, sandbox) -> Settings:
    """Point every account at the sandbox; add a sandbox account and a ``default`` store if none exist."""
    accounts = {
        name: replace(acc, api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url)
        for name, acc in settings.accounts.items()
    }
    if not accounts:
        accounts[SANDBOX_ACCOUNT] = AccountConfig(
            name=SANDBOX_ACCOUNT, api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url
        )
    stores = dict(settings.stores)
    if not stores:
        stores[SANDBOX_STORE] = StoreConfig(
            key=SANDBOX_STORE, account=next(iter(accounts)), lists={"customers": 1, "newsletter": 2, "sms": 3}
        )
    provision_sandbox(sandbox, stores.values())
    from ctdd.redaction import register_secrets

    register_secrets([sandbox.password])  # never logged, like a configured password
    return replace(settings, accounts=accounts, stores=stores)


def provision_sandbox(sandbox, stores) -> None:
    """Create the data fields the stores map to, and the lists they name (what ``ctdd dotdigital setup``
    does against a real account), and the programs they start, Active (which a real account must have)."""
    from ctdd.config import data_field_type

    stores = list(stores)
    for store in stores:
        for name in store.data_fields.values():
            sandbox.add_data_field(name, data_field_type(name))
        for name in store.list_names.values():
            if not any(b["name"].strip().casefold() == name.strip().casefold() for b in sandbox.address_books):
                sandbox.add_address_book(name.strip())
    provision_sandbox_programs(sandbox, stores)


def provision_sandbox_programs(sandbox, stores) -> None:
    """Create each configured program in the sandbox as Active: one given by id with that id (named
    ``program <id>``), one given by name with that name. A list_join program starts on its trigger list.
    Programs the sandbox already has are left as they are."""
    add_program = getattr(sandbox, "add_program", None)
    if add_program is None:  # `ctdd config check --sandbox`: no sandbox running
        return
    configured = [(store, cfg) for store in stores for cfg in store.programs.values()]
    # ids first, so that a program created by name does not take an id configured for another
    for store, cfg in sorted(configured, key=lambda item: not isinstance(item[1].program, int)):
        existing = sandbox.programs
        if isinstance(cfg.program, int):
            if any(p["id"] == cfg.program for p in existing):
                continue
            name, program_id = f"program {cfg.program}", cfg.program
        else:
            name, program_id = cfg.program.strip(), None
            if any(p["name"].strip().casefold() == name.casefold() for p in existing):
                continue
        add_program(name, status="Active", program_id=program_id,
                    start_list_id=_sandbox_trigger_list(sandbox, store, cfg))


def _sandbox_trigger_list(sandbox, store, cfg) -> int | None:
    """The sandbox address book a list_join program starts on (None: not list_join, or no such book)."""
    if cfg.strategy != "list_join" or not cfg.trigger_list:
        return None
    books = sandbox.address_books
    if cfg.trigger_list in store.lists:
        book_id = store.lists[cfg.trigger_list]
        return book_id if any(b["id"] == book_id for b in books) else None
    name = store.list_names.get(cfg.trigger_list, "").strip().casefold()
    return next((b["id"] for b in books if b["name"].strip().casefold() == name), None)


def load_without_credentials(args) -> Settings:
    """In sandbox mode accounts may lack credentials: the sandbox's are filled in."""
    env = dict(os.environ)
    raw_settings = None
    try:
        raw_settings = load_settings(args.config, env=env, overrides=_overrides(args))
    except ConfigError as exc:
        if "credentials missing" not in str(exc):
            raise
        import tomllib
        from pathlib import Path

        raw = tomllib.loads(Path(args.config or env["CTDD_CONFIG"]).read_text())
        for name in raw.get("accounts", {}):
            key = env_key(name)
            env.setdefault(f"CTDD_ACCOUNT_{key}_API_USER", "sandbox")
            env.setdefault(f"CTDD_ACCOUNT_{key}_PASSWORD", "sandbox")
        raw_settings = load_settings(args.config, env=env, overrides=_overrides(args))
    return _use_log_level(raw_settings)
