"""The values hooks receive and return (shared by the hook specifications and the manager)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ctdd.config import ConfigError, Settings, StoreConfig


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
    outcome: str  # delivered | retry | dead | parked
    attempt: int
    response_code: int | None
    error: str | None
    record_type: str | None
    record_id: str | None


@dataclass(frozen=True)
class TriggerInfo:
    """A due program trigger, as ``ctdd_should_trigger`` sees it (after every built-in safeguard passed)."""

    trigger_id: int
    #: abandoned_cart | browse_abandonment | post_purchase_first | post_purchase_repeat | review_request
    program_kind: str
    #: the Dotdigital program as configured (an id, or a name)
    program: int | str
    strategy: str  # enrolment | list_join
    channel: str  # email | sms
    contact_id: int
    email: str | None
    mobile_number: str | None
    #: cart | order | browse, the cart or order id (``browse/<contact id>`` for browse), its version
    subject_type: str
    subject_id: str
    subject_version: int
    #: 1..3: the step of a series
    step: int
    due_at: datetime
    #: the time of the decision (the processor's clock)
    now: datetime


@dataclass(frozen=True)
class TriggerDecision:
    """Returned by ``ctdd_should_trigger`` to stop a trigger (``veto``) or hold it back (``defer``).

    ``TriggerDecision.veto("staff account")`` skips the trigger with reason ``vetoed: staff account``;
    ``TriggerDecision.defer(until, "stock check")`` keeps it pending until ``until`` (aware datetime), when
    every safeguard is checked again.
    """

    #: veto | defer (the plugin manager reports a plugin that raised as ``failed``, reason ``<plugin>: <error>``)
    action: str
    reason: str
    until: datetime | None = None

    @classmethod
    def veto(cls, reason: str) -> TriggerDecision:
        return cls("veto", reason)

    @classmethod
    def defer(cls, until: datetime, reason: str = "deferred") -> TriggerDecision:
        if until.tzinfo is None:
            raise ValueError("TriggerDecision.defer needs an aware datetime")
        return cls("defer", reason, until)


class PluginConflict(ValueError):
    """Two plugins disagree about a value (enrichment clash); a configuration error."""


class PluginFailed(Exception):
    """A plugin failed in a hook: it raised ``cause``, or its answer was refused (a field changing JSON type,
    not a JSON object ...). The caller fails that one record (a rejected record, or a dead-lettered message)
    naming ``plugin`` and ``hook``; the other records keep flowing.

    The message names the plugin, the hook and the exception type or the refused field, never a value (values
    may be personal data); the cause, with its traceback, is chained and logged by the facade."""

    def __init__(self, plugin: str, hook: str, cause: BaseException | str):
        self.plugin = plugin
        self.hook = hook
        self.cause = cause
        detail = cause if isinstance(cause, str) else f"raised {type(cause).__name__}"
        super().__init__(f"plugin {plugin!r} failed in {hook}: {detail}")


class PluginStartupError(ConfigError):
    """A plugin cannot be loaded (its import failed, it implements a hook that does not exist, it is
    configured for stores that do not exist ...): start-up stops with a message naming the plugin."""

    def __init__(self, message: str, *, plugin: str | None = None, key: str | None = None):
        super().__init__(message, key=key)
        self.plugin = plugin


@dataclass(frozen=True)
class PluginInfo:
    """One registered plugin, as ``ctdd plugins list`` shows it."""

    name: str
    #: the hooks it implements, sorted
    hooks: tuple[str, ...]
    #: the distribution that ships it (None: registered in code) and its version
    distribution: str | None
    version: str | None
    #: the store keys it applies to (None: every store)
    stores: tuple[str, ...] | None
    bundled: bool = False
