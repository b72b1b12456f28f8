"""Which Dotdigital program (and trigger list) each configured program of a store is.

A program configured by id is used as is. One configured by name is resolved once per account
(``GET /v2/programs``, :func:`ctdd.dotdigital.provisioning.resolve_program_names`) when the processor starts,
and again at most every :data:`RETRY_SECONDS` while a name stays unresolved; until then its due triggers wait
(deferred with the reason ``program_unresolved``), they are not dropped.
"""

from __future__ import annotations

import logging
import time

from ctdd.config import Settings
from ctdd.dotdigital.provisioning import resolve_program_names

log = logging.getLogger(__name__)

RETRY_SECONDS = 300.0


class ProgramDirectory:
    def __init__(self, settings: Settings, clients):
        self.settings = settings
        self.clients = clients
        self._ids: dict[tuple[str, str], int] = {}
        self._next_attempt = 0.0
        self._reported: set[str] = set()

    @property
    def needs_resolving(self) -> bool:
        return any(isinstance(cfg.program, str) and (store.key, kind) not in self._ids
                   for store in self.settings.stores.values() for kind, cfg in store.programs.items())

    async def resolve(self, *, force: bool = False) -> None:
        """Resolve the program names not known yet (at most every RETRY_SECONDS unless ``force``)."""
        if not self.needs_resolving or (not force and time.monotonic() < self._next_attempt):
            return
        self._next_attempt = time.monotonic() + RETRY_SECONDS
        try:
            resolved, missing = await resolve_program_names(self.settings, self.clients)
        except Exception as exc:  # Dotdigital unreachable: try again later, the triggers wait
            log.warning("could not resolve program names (%s: %s); retrying in %.0fs", type(exc).__name__, exc,
                        RETRY_SECONDS)
            return
        self._ids.update(resolved)
        for (store_key, kind), program_id in sorted(resolved.items()):
            log.info("store %s: program %s resolved by name to id %s", store_key, kind, program_id)
        for item in missing:
            if item not in self._reported:
                self._reported.add(item)
                log.error("no Dotdigital program with the configured name: %s; its triggers wait until it exists "
                          "(check with `ctdd dotdigital setup --dry-run`)", item)

    def program_id(self, store_key: str, kind: str) -> int | None:
        store = self.settings.stores.get(store_key)
        cfg = store.programs.get(kind) if store is not None else None
        if cfg is None:
            return None
        if isinstance(cfg.program, int):
            return cfg.program
        return self._ids.get((store_key, kind))

    def trigger_list_id(self, store_key: str, kind: str) -> int | None:
        store = self.settings.stores.get(store_key)
        cfg = store.programs.get(kind) if store is not None else None
        if cfg is None or not cfg.trigger_list:
            return None
        return store.lists.get(cfg.trigger_list)
