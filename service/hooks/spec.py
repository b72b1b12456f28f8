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

The bundled default mapping (``ctdd.plugins.default_mapping``) is registered in code at start-up, with
``trylast=True``, so a brand plugin that answers ``ctdd_map_contact`` replaces it for its stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from ctdd.domain.catalog import CatalogItem
    from ctdd.domain.contact import ContactInput
    from ctdd.hooks.types import DeliveryOutcome, HookContext, SuppressDecision, TriggerDecision, TriggerInfo

hookspec = pluggy.HookspecMarker("ctdd")


@hookspec(firstresult=True)
def ctdd_map_contact(ctx: "HookContext", contact: "ContactInput") -> "Mapping[str, Any] | None":
    """Map a contact onto Dotdigital field paths for ``ctx.store``.

    Return a mapping of field path to value (see ``ctdd.domain.payload`` for the vocabulary, for example
    ``{"dataFields.FIRSTNAME": "Jane", "lists.12": True}``), or None to let the next plugin answer.
    The first non-None answer wins. Only attributes present in ``contact`` should be mapped: absent
    attributes mean "unchanged", ``None`` values mean "clear".
    """


@hookspec(firstresult=True)
def ctdd_map_catalog_item(ctx: "HookContext", item: "CatalogItem") -> "Mapping[str, Any] | None":
    """Map one catalog item (a product, or a variant) of ``ctx.store`` onto its Dotdigital catalog record.

    ``item`` is a :class:`ctdd.domain.catalog.CatalogItem`: texts per locale (name, description as plain
    text, URL from the store's template, category paths), the selected price per currency (with the sale
    price), images, attributes, stock and the product projection as read. Return the record (a JSON object:
    keys of ``A-Z a-z 0-9 _ -``, no arrays of arrays, and each field always of the same JSON type, since the
    collection's schema is fixed by its first records), or None to let the next plugin answer. The first
    non-None answer wins; the bundled ``ctdd.plugins.catalog_mapping`` answers last. Only changed records
    are sent (the delta compares a hash of what you return).
    """


@hookspec
def ctdd_enrich_contact(
    ctx: "HookContext", contact: "ContactInput", mapped: "Mapping[str, Any]"
) -> "Mapping[str, Any] | None":
    """Add field paths to a mapped contact (for example a loyalty tier looked up from a local cache).

    Every implementation is called; return a mapping of extra field paths, or None. Two plugins that set
    the same field path to different values are a configuration error and fail the request; a plugin may
    not override a field the mapping produced.
    """


@hookspec
def ctdd_suppress_contact(
    ctx: "HookContext", contact: "ContactInput", mapped: "Mapping[str, Any]"
) -> "SuppressDecision | None":
    """Veto sending a contact update to Dotdigital (test accounts, internal staff, blocked domains ...).

    Every implementation is called; return ``SuppressDecision(reason=...)`` to suppress, or None. Any
    suppression wins and every reason is kept. A suppressed update is accepted (the RPC answers OK) but
    nothing is enqueued and the reasons are returned to the caller.
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
