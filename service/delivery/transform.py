"""The plugins' last look at an outbound body (``ctdd_transform_payload``), just before the dispatcher sends
a message: the v3 contact body of a ``contact.upsert``, the record(s) of an ``insight.upsert``.

What is sent is transformed (also the known state a contact deleted in Dotdigital is recreated with:
:func:`transformed_contact_body`); what the outbox keeps (and what the delta compares) is what the service built,
so a retried message is transformed again. A plugin that fails raises :class:`PluginFailed`: the dispatcher
dead-letters that message (poison, not retried) and goes on with the others.
"""

from __future__ import annotations

from dataclasses import replace

from ctdd.config import Settings
from ctdd.delivery.outbox import CONTACT_UPSERT, INSIGHT_UPSERT, ClaimedMessage
from ctdd.hooks.manager import Hooks
from ctdd.hooks.types import HookContext, PluginFailed

__all__ = ["PluginFailed", "transformed", "transformed_contact_body"]

HOOK = "ctdd_transform_payload"


def transformed(hooks: Hooks, settings: Settings, msg: ClaimedMessage) -> ClaimedMessage:
    """``msg`` with its outbound body as the plugins of its store transform it (``msg`` itself when no
    plugin applies, or the kind has no body to transform). Raises PluginFailed."""
    store = settings.stores.get(msg.store_key or "")
    payload = msg.payload
    if store is None or not isinstance(payload, dict) or msg.kind not in (CONTACT_UPSERT, INSIGHT_UPSERT):
        return msg
    if not hooks.implementations(HOOK, store.key):
        return msg
    ctx = HookContext(store=store, settings=settings)
    if msg.kind == CONTACT_UPSERT:
        if not isinstance(payload.get("body"), dict):
            return msg
        return replace(msg, payload={**payload, "body": hooks.transform_payload(ctx, "contact", None, payload["body"])})
    collection = payload.get("collection")
    changed = dict(payload)
    if isinstance(payload.get("record"), dict):
        changed["record"] = hooks.transform_payload(ctx, "insight", collection, payload["record"])
    if payload.get("records"):  # merged product views (ctdd.delivery.view_merge): every record they carry
        changed["records"] = [{**entry, "record": hooks.transform_payload(ctx, "insight", collection, entry["record"])}
                              for entry in payload["records"]]
    return replace(msg, payload=changed)


def transformed_contact_body(hooks: Hooks, settings: Settings, store_key: str | None, body: dict) -> dict:
    """A v3 contact body as the plugins of ``store_key`` transform an outbound contact body (``body`` itself when
    none applies). Raises PluginFailed."""
    store = settings.stores.get(store_key or "")
    if store is None or not hooks.implementations(HOOK, store.key):
        return body
    return hooks.transform_payload(HookContext(store=store, settings=settings), "contact", None, body)
