"""Plugin manager and the typed facade the core uses to call hooks (tox pattern).

Environment variables:

- ``CTDD_DISABLE_PLUGINS``: comma-separated plugin names (entry-point names) not to load.
- ``CTDD_TRACE_PLUGINS=1``: log every hook call (pluggy tracing).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterable, Mapping

import pluggy

from ctdd import hookimpl  # noqa: F401  (re-exported)
from ctdd.plugins import catalog_mapping, default_mapping
from ctdd.domain.catalog import CatalogItem
from ctdd.domain.contact import ContactInput
from ctdd.hooks import spec as hookspecs
from ctdd.hooks.types import (  # noqa: F401  (re-exported)
    DeliveryOutcome, HookContext, PluginConflict, SuppressDecision, TriggerDecision, TriggerInfo,
)

log = logging.getLogger(__name__)

PROJECT = "ctdd"


class Hooks:
    """Typed facade over ``pm.hook``: the only way the core calls plugins."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm

    def map_contact(self, ctx: HookContext, contact: ContactInput) -> dict[str, Any]:
        mapped = self.pm.hook.ctdd_map_contact(ctx=ctx, contact=contact)
        if mapped is None:
            raise LookupError(f"no plugin mapped contacts for store {ctx.store_key!r}")
        return dict(mapped)

    def map_catalog_item(self, ctx: HookContext, item: CatalogItem) -> dict[str, Any]:
        mapped = self.pm.hook.ctdd_map_catalog_item(ctx=ctx, item=item)
        if mapped is None:
            raise LookupError(f"no plugin mapped catalog items for store {ctx.store_key!r}")
        return dict(mapped)

    def enrich_contact(self, ctx: HookContext, contact: ContactInput, mapped: Mapping[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        frozen = dict(mapped)
        for fragment in self.pm.hook.ctdd_enrich_contact(ctx=ctx, contact=contact, mapped=frozen):
            for path, value in (fragment or {}).items():
                if path in frozen:
                    raise PluginConflict(f"enrichment tried to override mapped field {path!r}")
                if path in merged and merged[path] != value:
                    raise PluginConflict(f"two enrichment plugins set {path!r} to different values")
                merged[path] = value
        return merged

    def suppress_contact(self, ctx: HookContext, contact: ContactInput, mapped: Mapping[str, Any]) -> list[str]:
        decisions = self.pm.hook.ctdd_suppress_contact(ctx=ctx, contact=contact, mapped=dict(mapped))
        return [d.reason for d in decisions if d is not None]

    def delivery_result(self, ctx: HookContext, outcome: DeliveryOutcome) -> None:
        try:
            self.pm.hook.ctdd_delivery_result(ctx=ctx, outcome=outcome)
        except Exception:  # notification hooks must never break delivery
            log.exception("ctdd_delivery_result hook failed for message %s", outcome.message_id)

    def should_trigger(self, ctx: HookContext, trigger: TriggerInfo) -> TriggerDecision | None:
        """Ask every ``ctdd_should_trigger`` implementation about ``trigger``: the first veto, else the latest
        deferral, else None (allowed). An implementation that raises vetoes this trigger with a reason naming
        the plugin (``plugin_failed: <name>: <exception>``); the other triggers are not affected."""
        veto: TriggerDecision | None = None
        defer: TriggerDecision | None = None
        # Called one by one (not through pm.hook) so that a failure names its plugin and stops nothing else.
        for impl in reversed(self.pm.hook.ctdd_should_trigger.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue
            plugin = _plugin_label(impl)
            try:
                answer = impl.function(**{name: value for name, value in (("ctx", ctx), ("trigger", trigger))
                                          if name in impl.argnames})
            except Exception as exc:
                log.exception("ctdd_should_trigger of plugin %s failed for trigger %s", plugin, trigger.trigger_id)
                return TriggerDecision("failed", f"{plugin}: {type(exc).__name__}")
            if answer is None:
                continue
            if not isinstance(answer, TriggerDecision) or answer.action not in ("veto", "defer"):
                log.error("ctdd_should_trigger of plugin %s returned %r (expected None or a TriggerDecision)",
                          plugin, answer)
                return TriggerDecision("failed", f"{plugin}: invalid answer {type(answer).__name__}")
            if answer.action == "veto":
                veto = veto or answer
            elif defer is None or (answer.until and defer.until and answer.until > defer.until):
                defer = answer
        return veto or defer


def _plugin_label(impl) -> str:
    """The plugin's registered name, or for one registered without a name its module or class name."""
    name = impl.plugin_name
    if name and not name.isdigit():
        return name
    return getattr(impl.plugin, "__name__", None) or type(impl.plugin).__name__


def create_plugin_manager(
    extra_plugins: Iterable[object] = (), *, load_entrypoints: bool = True, env: Mapping[str, str] | None = None
) -> Hooks:
    """Build the plugin manager: hookspecs, the bundled default mapping, ``ctdd`` entry points, then ``extra_plugins``.

    The default mapping is registered in code (as datasette registers its default plugins), so an
    installation without entry points still maps contacts.

    ``check_pending()`` runs last, so an implementation of a misspelt hook fails start-up loudly.
    """
    env = os.environ if env is None else env
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = {n.strip() for n in env.get("CTDD_DISABLE_PLUGINS", "").split(",") if n.strip()}
    for name in disabled:
        pm.set_blocked(name)
    if "default_mapping" not in disabled:
        pm.register(default_mapping, name="default_mapping")
    if "catalog_mapping" not in disabled:
        pm.register(catalog_mapping, name="catalog_mapping")
    if load_entrypoints:
        pm.load_setuptools_entrypoints(PROJECT)
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.check_pending()
    if env.get("CTDD_TRACE_PLUGINS"):
        pm.trace.root.setwriter(lambda msg: log.debug("plugin trace: %s", msg.rstrip()))
        pm.enable_tracing()
    log.info("plugins loaded: %s", ", ".join(sorted(n for n, _ in pm.list_name_plugin() if n)))
    return Hooks(pm)
