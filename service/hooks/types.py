"""The values hooks receive and return (shared by the hook specifications and the manager)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ctdd.config import Settings, StoreConfig


@dataclass(frozen=True)
class HookContext:
    """What every hook gets to know about the call it is part of."""

    store: StoreConfig
    settings: Settings
    #: free-form per-call storage for cooperating plugins
    stash: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def store_key(self) -> str:
        return self.store.key

    @property
    def commercetools_project(self) -> str:
        return self.store.commercetools_project


@dataclass(frozen=True)
class SuppressDecision:
    """Returned by ``ctdd_suppress_contact`` to stop an update from being sent."""

    reason: str


@dataclass(frozen=True)
class DeliveryOutcome:
    """One delivery attempt, as reported to ``ctdd_delivery_result``."""

    message_id: int
    kind: str
    outcome: str  # delivered | retry | dead
    attempt: int
    response_code: int | None
    error: str | None
    record_type: str | None
    record_id: str | None


class PluginConflict(ValueError):
    """Two plugins disagree about a value (enrichment clash); a configuration error."""
