"""Hook specifications for ctdd-sync plugins (pluggy project name ``ctdd``).

A plugin is a module or object with functions named after these hooks and decorated with
``ctdd.hookimpl``; it is registered through the ``ctdd`` entry-point group::

    [project.entry-points.ctdd]
    my_brand = "my_brand_plugin"

Rules for every hook:

- Hooks are called with keyword arguments; an implementation may accept any subset of them.
- Hooks run synchronously inside the service's event loop: keep them fast and free of network I/O.
- ``ctx`` is a :class:`ctdd.hooks.types.HookContext`: the store key, its configuration and the
  commercetools project. New context goes there, so hook signatures stay stable.
- Do not mutate the arguments unless the hook says so.
- A plugin scoped to some stores (``[plugins.<name>] stores = [...]`` in the configuration) is only called
  for those stores; the bundled plugins and unscoped plugins are called for every store.
- An exception raised by an implementation never stops the service: the facade (``ctdd.hooks.manager``)
  turns it into :class:`ctdd.hooks.types.PluginFailed` naming the plugin and the hook, and the record
  concerned is failed (a rejected record, a dead-lettered message); each hook says what happens exactly.
- The "modify the record we built" hooks (``ctdd_map_order``, ``ctdd_map_cart``,
  ``ctdd_map_behavioural_event``, ``ctdd_transform_payload``) receive the record the service built and
  may return a replacement. Their answers are chained: every implementation is called, in call order,
  each receiving the record as the previous one left it. A field whose JSON type changes (relative to
  the record the service built, or to the type the collection already has) is refused with
  ``PluginFailed`` naming the plugin: a Dotdigital collection's schema is fixed by its first records.

The bundled default mapping (``ctdd.plugins.default_mapping``) is registered in code at start-up, with
``trylast=True``, so a brand plugin that answers ``ctdd_map_contact`` replaces it for its stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ctdd.domain.behaviour import BehaviouralEventInput
    from ctdd.domain.catalog import CatalogItem
    from ctdd.domain.contact import ContactInput
    from ctdd.hooks.types import DeliveryOutcome, HookContext, SuppressDecision, TriggerDecision, TriggerInfo

hookspec = pluggy.HookspecMarker("ctdd")


@hookspec(firstresult=True)
def ctdd_map_contact(ctx: "HookContext", contact: "ContactInput") -> "Mapping[str, Any] | None":
    """Map a contact onto Dotdigital field paths for ``ctx.store``.

    Return a mapping of field path to value (see ``ctdd.domain.payload`` for the vocabulary, for example
    ``{"dataFields.FIRSTNAME": "Jane", "lists.12": True}``), or None to let the next plugin answer.
    The first non-None answer wins (``firstresult``); the bundled default mapping answers last. Only
    attributes present in ``contact`` should be mapped: absent attributes mean "unchanged", ``None`` values
    mean "clear".

    An exception raises ``PluginFailed`` (plugin and hook named) to the caller: the contact update fails.
    """


@hookspec(firstresult=True)
def ctdd_map_catalog_item(ctx: "HookContext", item: "CatalogItem") -> "Mapping[str, Any] | None":
    """Map one catalog item (a product, or a variant) of ``ctx.store`` onto its Dotdigital catalog record.

    ``item`` is a :class:`ctdd.domain.catalog.CatalogItem`: texts per locale (name, description as plain
    text, URL from the store's template, category paths), the selected price per currency (with the sale
    price), images, attributes, stock and the product projection as read. Return the record (a JSON object:
    keys of ``A-Z a-z 0-9 _ -``, no arrays of arrays, and each field always of the same JSON type, since the
    collection's schema is fixed by its first records), or None to let the next plugin answer. The first
    non-None answer wins (``firstresult``); the bundled ``ctdd.plugins.catalog_mapping`` answers last. Only
    changed records are sent (the delta compares a hash of what you return).

    An answer in which a field the bundled mapping also produces has another JSON type, or a field has
    another JSON type than in the records already mapped for the store, is refused. A refused answer or an
    exception fails that item only: it is logged in ``rejected_record`` (operation ``catalog.map``) naming
    the plugin and the hook, the record already in Dotdigital is kept as it is, and the export goes on.
    """


@hookspec
def ctdd_enrich_contact(
    ctx: "HookContext", contact: "ContactInput", mapped: "Mapping[str, Any]"
) -> "Mapping[str, Any] | None":
    """Add field paths to a mapped contact (for example a loyalty tier looked up from a local cache).

    Every implementation is called; return a mapping of extra field paths, or None. Two plugins that set
    the same field path to different values are a configuration error and fail the request; a plugin may
    not override a field the mapping produced. An exception raises ``PluginFailed`` (plugin and hook
    named): the contact update fails.
    """


@hookspec
def ctdd_suppress_contact(
    ctx: "HookContext", contact: "ContactInput", mapped: "Mapping[str, Any]"
) -> "SuppressDecision | None":
    """Veto sending a contact update to Dotdigital (test accounts, internal staff, blocked domains ...).

    Every implementation is called; return ``SuppressDecision(reason=...)`` to suppress, or None. Any
    suppression wins and every reason is kept. A suppressed update is accepted (the RPC answers OK) but
    nothing is enqueued and the reasons are returned to the caller. An exception raises ``PluginFailed``
    (plugin and hook named): the contact update fails rather than being sent unjudged.
    """


@hookspec
def ctdd_delivery_result(ctx: "HookContext", outcome: "DeliveryOutcome") -> None:
    """Observe the outcome of one delivery attempt to Dotdigital (delivered, retry, dead or parked: retries ran
    out, the message is kept and resumes when its account delivers again).

    Notification only: the return value is ignored, and an exception is logged and swallowed.
    """


@hookspec
def ctdd_should_trigger(ctx: "HookContext", trigger: "TriggerInfo") -> "TriggerDecision | None":
    """Veto or hold back a program trigger (abandoned cart, browse abandonment, post-purchase, review request)
    at the moment it would be sent.

    Called by the trigger processor (``ctdd.programs.processor``) for a due trigger once every built-in
    safeguard has passed (the subject still stands, the contact has an address and consent, it is outside
    the re-trigger window) and before the quiet hours and the Dotdigital-contact wait, so a deferral you
    ask for is combined with those.

    Arguments:
        ctx: the store (``ctx.store``, with ``ctx.store.programs``) and the settings.
        trigger: a :class:`ctdd.hooks.types.TriggerInfo`: the program kind and configured program, the
            strategy and channel, the contact (id, email, mobile number), the subject (``cart``/``order``/
            ``browse``, its id and version), the step of the series, its due time and the processor's ``now``.

    Return:
        - ``None`` to allow it;
        - ``TriggerDecision.veto(reason)``: the trigger is skipped, its reason recorded as ``vetoed: <reason>``;
        - ``TriggerDecision.defer(until, reason)``: it stays pending until ``until`` (an aware datetime), when
          all safeguards and this hook are asked again; recorded as ``deferred_by_plugin: <reason>``.

    Not ``firstresult``: every implementation is called. Any veto wins (the first plugin's reason is kept);
    otherwise the latest deferral wins.

    An implementation that raises skips that trigger only, with the reason ``plugin_failed: <plugin name>:
    <exception type>`` (logged with its traceback): a failing plugin never sends what it could not judge, and
    never blocks the other triggers. Keep it fast and free of network I/O, as every hook.
    """


@hookspec
def ctdd_map_order(ctx: "HookContext", order: "Mapping[str, Any]", record: "dict[str, Any]") -> "Mapping[str, Any] | None":
    """Adjust or replace the Orders insight record the service built for a commercetools order.

    Arguments:
        ctx: the store the order belongs to.
        order: the commercetools order as read (a JSON object: ``id``, ``orderNumber``, ``lineItems``,
            ``totalPrice``, ``custom`` ...). Read-only.
        record: the record the service built (a copy: ``id``, ``orderNumber``, ``orderTotal``, ``currency``,
            ``products`` ...; see ``ctdd.domain.commerce.order_record``), as the previous plugin left it.

    Return:
        None to keep ``record`` (which you may have changed in place), or a mapping that replaces it.

    Not ``firstresult``: every implementation is called in turn, each receiving the previous one's record;
    the last record is sent to the ``Orders`` collection. A field whose JSON type differs from the built
    record's (or from the type the collection already has) is refused.

    An exception or a refused answer fails that order's record only: ``PluginFailed`` names the plugin and the
    hook, the order is logged in ``rejected_record`` and the contact's other updates keep flowing.
    """


@hookspec
def ctdd_map_cart(ctx: "HookContext", cart: "Mapping[str, Any]", record: "dict[str, Any]") -> "Mapping[str, Any] | None":
    """Adjust or replace the CartInsight record the service built for a cart.

    Arguments:
        ctx: the store the cart belongs to.
        cart: the commercetools cart as read (or, for the ``ORDER_COMPLETE`` record of a cart whose current
            state could not be read, the order placed from it). Read-only.
        record: the record the service built (a copy: ``cartId``, ``cartPhase``, ``currency``,
            ``lineItems`` ...; see ``ctdd.domain.commerce.cart_record``), as the previous plugin left it.

    Return:
        None to keep ``record`` (which you may have changed in place), or a mapping that replaces it.

    Not ``firstresult``: every implementation is called in turn, each receiving the previous one's record;
    the last record is sent to the ``CartInsight`` collection. A field whose JSON type differs from the
    built record's (or from the type the collection already has) is refused.

    An exception or a refused answer fails that cart's record only: ``PluginFailed`` names the plugin and the
    hook, the cart is logged in ``rejected_record`` and the other records keep flowing.
    """


@hookspec
def ctdd_map_behavioural_event(
    ctx: "HookContext", event: "BehaviouralEventInput", collection: str, record: "dict[str, Any]"
) -> "Mapping[str, Any] | None":
    """Adjust or replace the insight record of a behavioural event (``product_viewed`` to the
    ``ProductViews`` collection, a custom event to ``CustomEvents``).

    Arguments:
        ctx: the store the event belongs to.
        event: the event (a :class:`ctdd.domain.behaviour.BehaviouralEventInput`: ``kind``, ``event_id``,
            ``identity``, ``occurred_at``, ``locale``, ``currency``, ``data``). Read-only.
        collection: the insight collection the record goes to.
        record: the record the service built (a copy of the event's data), as the previous plugin left it.

    Return:
        None to keep ``record`` (which you may have changed in place), or a mapping that replaces it.

    Not ``firstresult``: every implementation is called in turn, each receiving the previous one's record.
    A field whose JSON type differs from the built record's (or from the type the collection already has)
    is refused.

    An exception or a refused answer fails that event's record only: ``PluginFailed`` names the plugin and the
    hook, the event is logged in ``rejected_record`` and the other events keep flowing.
    """


@hookspec
def ctdd_transform_payload(
    ctx: "HookContext", kind: str, collection: "str | None", body: "dict[str, Any]"
) -> "Mapping[str, Any] | None":
    """Last look at an outbound body, just before it is sent to Dotdigital.

    Arguments:
        ctx: the store the body belongs to.
        kind: ``contact`` (the v3 contact body of a contact upsert: ``identifiers``, ``dataFields``,
            ``channelProperties``, ``lists`` ...), ``insight`` (a contact-scoped insight record: Orders,
            CartInsight, ProductViews, CustomEvents) or ``catalog`` (a record of the store's catalog or
            category collection).
        collection: the insight or catalog collection (None for ``contact``).
        body: the body as the service (and the previous plugin) left it; a copy.

    Return:
        None to keep ``body`` (which you may have changed in place), or a mapping that replaces it.

    Not ``firstresult``: every implementation is called in turn, each receiving the previous one's body. A
    field whose JSON type differs from the body's (or, for a collection, from the type the collection already
    has) is refused. The delta compares what was built, not what you send: a change of your transform
    alone re-sends nothing.

    An exception or a refused answer fails that message only, for good: it is dead-lettered (a catalog record
    is logged in ``rejected_record``) with the reason ``plugin '<name>' failed in ctdd_transform_payload:
    ...``; it is not retried, and the dispatcher goes on with the other messages.
    """
