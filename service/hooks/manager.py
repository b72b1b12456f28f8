"""Plugin manager and the typed facade the core uses to call hooks (tox pattern).

The facade (:class:`Hooks`) calls each implementation itself, one by one, rather than through ``pm.hook``:
so that a plugin scoped to some stores (``[plugins.<name>] stores = [...]``) is only called for them, and
so that a failure names its plugin and its hook (:class:`PluginFailed`). ``firstresult`` hooks stop at the
first answer, as pluggy would; hook wrappers are not called.

Environment variables:

- ``CTDD_DISABLE_PLUGINS``: comma-separated plugin names (entry-point names) not to load.
- ``CTDD_TRACE_PLUGINS=1``: log every hook call (at DEBUG).
"""

from __future__ import annotations

import copy
import difflib
import logging
import os
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Mapping

import pluggy

from ctdd import __version__, hookimpl  # noqa: F401  (hookimpl re-exported)
from ctdd.domain.behaviour import BehaviouralEventInput
from ctdd.domain.catalog import CatalogItem
from ctdd.domain.collections import CART_COLLECTION, ORDERS_COLLECTION
from ctdd.domain.contact import ContactInput
from ctdd.hooks import schema_guard
from ctdd.hooks import spec as hookspecs
from ctdd.hooks.types import (  # noqa: F401  (re-exported)
    DeliveryOutcome, HookContext, PluginConflict, PluginFailed, PluginInfo, PluginStartupError, SuppressDecision,
    TriggerDecision, TriggerInfo,
)
from ctdd.plugins import catalog_mapping, default_mapping

log = logging.getLogger(__name__)

PROJECT = "ctdd"
#: plugins registered in code by the service itself: they apply to every store
BUNDLED = {"default_mapping": default_mapping, "catalog_mapping": catalog_mapping}
#: the kinds of body ``ctdd_transform_payload`` sees
PAYLOAD_KINDS = ("contact", "insight", "catalog")


class Hooks:
    """Typed facade over the plugins: the only way the core calls them.

    ``scopes``: plugin name -> the store keys it applies to (a plugin not named applies to every store)."""

    def __init__(self, pm: pluggy.PluginManager, scopes: Mapping[str, Iterable[str]] | None = None, *,
                 trace: bool = False):
        self.pm = pm
        self.scopes = {name: frozenset(stores) for name, stores in (scopes or {}).items()}
        self.trace = trace
        self.known_types = schema_guard.KnownTypes()
        #: (hook, store key) -> (pluggy's implementations when computed, the ones that apply): hooks are called
        #: several times per event, and the plugins rarely change (see implementations)
        self._applicable: dict[tuple[str, str | None], tuple[list[pluggy.HookImpl], tuple[pluggy.HookImpl, ...]]] = {}

    # -- calling implementations ------------------------------------------------------------------
    def implementations(self, hook: str, store_key: str | None) -> tuple[pluggy.HookImpl, ...]:
        """The implementations of ``hook`` that apply to ``store_key``, in pluggy's call order (tryfirst
        first, trylast last, otherwise the last registered first).

        Remembered per hook and store while pluggy's list of the hook's implementations stays the same
        (compared element by element, by identity): a plugin registered or unregistered later is seen."""
        registered = getattr(self.pm.hook, hook).get_hookimpls()
        key = (hook, store_key)
        known = self._applicable.get(key)
        if known is not None and known[0] == registered:
            return known[1]
        out = []
        for impl in reversed(registered):
            if impl.wrapper or impl.hookwrapper:
                continue
            scope = self.scopes.get(impl.plugin_name)
            if scope is not None and store_key not in scope:
                continue
            out.append(impl)
        applicable = tuple(out)
        self._applicable[key] = (registered, applicable)
        return applicable

    def _call(self, impl: pluggy.HookImpl, hook: str, kwargs: Mapping[str, Any]) -> Any:
        plugin = plugin_label(impl)
        if self.trace:
            log.debug("plugin trace: %s.%s", plugin, hook)
        try:
            return impl.function(*[kwargs[name] for name in impl.argnames])
        except Exception as exc:
            log.exception("%s of plugin %s failed", hook, plugin)
            raise PluginFailed(plugin, hook, exc) from exc

    def _first(self, hook: str, ctx: HookContext, **kwargs: Any) -> tuple[Any, pluggy.HookImpl | None]:
        """``firstresult``: the first non-None answer and the implementation that gave it."""
        kwargs["ctx"] = ctx
        for impl in self.implementations(hook, ctx.store_key):
            answer = self._call(impl, hook, kwargs)
            if answer is not None:
                return answer, impl
        return None, None

    def _chain(self, hook: str, ctx: HookContext, built_record: dict[str, Any], collection_key: Any,
               **kwargs: Any) -> dict[str, Any]:
        """A "modify the record we built" hook: each implementation gets the record the previous one left (a
        copy) and returns a replacement or None (keep it, changes in place included); every answer passes the
        schema guard (against the built record and the collection's known types)."""
        impls = self.implementations(hook, ctx.store_key)
        if not impls:
            return built_record
        built = schema_guard.field_types(built_record)
        known = self.known_types.get(collection_key) if collection_key is not None else {}
        kwargs["ctx"] = ctx
        name = "body" if hook == "ctdd_transform_payload" else "record"
        current = built_record
        for impl in impls:
            work = copy.deepcopy(current)
            answer = self._call(impl, hook, {**kwargs, name: work})
            answer = work if answer is None else answer
            current = self._checked(impl, hook, answer, built, known)
        if collection_key is not None:
            self.known_types.learn(collection_key, schema_guard.field_types(current))
        return current

    def _checked(self, impl: pluggy.HookImpl, hook: str, answer: Any, built: Mapping[str, str],
                 known: Mapping[str, str]) -> dict[str, Any]:
        plugin = plugin_label(impl)
        if not isinstance(answer, Mapping):
            raise _refused(plugin, hook, f"returned {type(answer).__name__}, expected a JSON object or None")
        if not all(isinstance(key, str) for key in answer):
            raise _refused(plugin, hook, "returned an object whose keys are not all strings")
        problems = schema_guard.refusals(built, known, answer)
        if problems:
            raise _refused(plugin, hook, "; ".join(problems))
        return dict(answer)

    # -- contacts -----------------------------------------------------------------------------
    def map_contact(self, ctx: HookContext, contact: ContactInput) -> dict[str, Any]:
        """``ctdd_map_contact`` (firstresult): the field paths of the first plugin that answers.

        Raises LookupError when no plugin maps contacts for the store, PluginFailed when one raises."""
        mapped, _ = self._first("ctdd_map_contact", ctx, contact=contact)
        if mapped is None:
            raise LookupError(f"no plugin mapped contacts for store {ctx.store_key!r}")
        return dict(mapped)

    def enrich_contact(self, ctx: HookContext, contact: ContactInput, mapped: Mapping[str, Any]) -> dict[str, Any]:
        """``ctdd_enrich_contact`` (every plugin): the extra field paths of all of them together.

        Raises PluginConflict when two plugins disagree or one overrides a mapped field, PluginFailed when one
        raises."""
        merged: dict[str, Any] = {}
        frozen = dict(mapped)
        kwargs = {"ctx": ctx, "contact": contact, "mapped": frozen}
        for impl in self.implementations("ctdd_enrich_contact", ctx.store_key):
            fragment = self._call(impl, "ctdd_enrich_contact", kwargs)
            for path, value in (fragment or {}).items():
                if path in frozen:
                    raise PluginConflict(f"enrichment tried to override mapped field {path!r}")
                if path in merged and merged[path] != value:
                    raise PluginConflict(f"two enrichment plugins set {path!r} to different values")
                merged[path] = value
        return merged

    def suppress_contact(self, ctx: HookContext, contact: ContactInput, mapped: Mapping[str, Any]) -> list[str]:
        """``ctdd_suppress_contact`` (every plugin): the reasons of all that suppress (empty: send it).

        Raises PluginFailed when one raises (a contact is never sent unjudged)."""
        kwargs = {"ctx": ctx, "contact": contact, "mapped": dict(mapped)}
        reasons = []
        for impl in self.implementations("ctdd_suppress_contact", ctx.store_key):
            decision = self._call(impl, "ctdd_suppress_contact", kwargs)
            if decision is not None:
                reasons.append(decision.reason)
        return reasons

    # -- records sent to Dotdigital -------------------------------------------------------------
    def map_catalog_item(self, ctx: HookContext, item: CatalogItem) -> dict[str, Any]:
        """``ctdd_map_catalog_item`` (firstresult): the record of the first plugin that answers.

        A brand plugin's record (not the bundled mapping's) is checked by the schema guard against the
        record the bundled mapping builds for the item and the types the store's catalog already has.
        Raises LookupError when no plugin maps catalog items, PluginFailed when one raises or is refused."""
        hook = "ctdd_map_catalog_item"
        record, impl = self._first(hook, ctx, item=item)
        if record is None or impl is None:
            raise LookupError(f"no plugin mapped catalog items for store {ctx.store_key!r}")
        key = ("catalog", ctx.store.account, ctx.store_key)
        if impl.plugin_name == "catalog_mapping":
            built: Mapping[str, str] = {}
        else:
            built = self._bundled_catalog_types(ctx, item)
        checked = self._checked(impl, hook, record, built, self.known_types.get(key))
        self.known_types.learn(key, schema_guard.field_types(checked))
        return checked

    def _bundled_catalog_types(self, ctx: HookContext, item: CatalogItem) -> Mapping[str, str]:
        """The field types of the record the bundled mapping builds for ``item`` (none when it is disabled)."""
        if self.pm.get_plugin("catalog_mapping") is None:
            return {}
        try:
            return schema_guard.field_types(catalog_mapping.ctdd_map_catalog_item(ctx, item))
        except Exception:  # the brand plugin maps what the bundled mapping cannot: nothing to compare with
            log.debug("the bundled catalog mapping could not map item %s", item.key, exc_info=True)
            return {}

    def map_order(self, ctx: HookContext, order: Mapping[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        """``ctdd_map_order`` (chained): the Orders record to send, ``record`` itself when no plugin applies.

        Raises PluginFailed (plugin and hook named) when a plugin raises or its answer is refused: the caller
        fails this order's record (a rejected record) and goes on."""
        return self._chain("ctdd_map_order", ctx, record, ("insight", ctx.store.account, ORDERS_COLLECTION),
                           order=order)

    def map_cart(self, ctx: HookContext, cart: Mapping[str, Any], record: dict[str, Any]) -> dict[str, Any]:
        """``ctdd_map_cart`` (chained): the CartInsight record to send, ``record`` itself when no plugin applies.

        Raises PluginFailed (plugin and hook named) when a plugin raises or its answer is refused."""
        return self._chain("ctdd_map_cart", ctx, record, ("insight", ctx.store.account, CART_COLLECTION),
                           cart=cart)

    def map_behavioural_event(self, ctx: HookContext, event: BehaviouralEventInput, collection: str,
                              record: dict[str, Any]) -> dict[str, Any]:
        """``ctdd_map_behavioural_event`` (chained): the insight record of a product view or custom event.

        Raises PluginFailed (plugin and hook named) when a plugin raises or its answer is refused."""
        return self._chain("ctdd_map_behavioural_event", ctx, record, ("insight", ctx.store.account, collection),
                           event=event, collection=collection)

    def transform_payload(self, ctx: HookContext, kind: str, collection: str | None,
                          body: dict[str, Any]) -> dict[str, Any]:
        """``ctdd_transform_payload`` (chained): the body to send, ``body`` itself when no plugin applies.

        ``kind``: one of :data:`PAYLOAD_KINDS`. Raises PluginFailed when a plugin raises or its answer is
        refused: the caller fails that message for good (dead letter), it is not retried."""
        if kind not in PAYLOAD_KINDS:
            raise ValueError(f"unknown payload kind {kind!r} (one of {', '.join(PAYLOAD_KINDS)})")
        key = (kind, ctx.store.account, collection) if collection is not None else None
        return self._chain("ctdd_transform_payload", ctx, body, key, kind=kind, collection=collection)

    # -- notifications and programs ---------------------------------------------------------------
    def delivery_result(self, ctx: HookContext, outcome: DeliveryOutcome) -> None:
        """``ctdd_delivery_result`` (every plugin, notification only): an exception is logged and swallowed."""
        kwargs = {"ctx": ctx, "outcome": outcome}
        for impl in self.implementations("ctdd_delivery_result", ctx.store_key):
            try:  # notification hooks must never break delivery (the traceback is logged by _call)
                self._call(impl, "ctdd_delivery_result", kwargs)
            except PluginFailed as exc:
                log.error("%s (message %s)", exc, outcome.message_id)

    def should_trigger(self, ctx: HookContext, trigger: TriggerInfo) -> TriggerDecision | None:
        """Ask every ``ctdd_should_trigger`` implementation about ``trigger``: the first veto, else the latest
        deferral, else None (allowed). An implementation that raises vetoes this trigger with a reason naming
        the plugin (``plugin_failed: <name>: <exception>``); the other triggers are not affected."""
        veto: TriggerDecision | None = None
        defer: TriggerDecision | None = None
        kwargs = {"ctx": ctx, "trigger": trigger}
        for impl in self.implementations("ctdd_should_trigger", ctx.store_key):
            plugin = plugin_label(impl)
            try:
                answer = self._call(impl, "ctdd_should_trigger", kwargs)
            except PluginFailed as exc:
                return TriggerDecision("failed", f"{plugin}: {type(exc.cause).__name__}")
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

    # -- what is loaded ---------------------------------------------------------------------------
    def describe(self) -> list[PluginInfo]:
        """Every registered plugin: its hooks, distribution and version, and the stores it applies to."""
        dists = {id(plugin): dist for plugin, dist in self.pm.list_plugin_distinfo()}
        out = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue  # blocked
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            dist = dists.get(id(plugin))
            bundled = name in BUNDLED and plugin is BUNDLED[name]
            distribution = "ctdd-sync" if bundled else (dist.project_name if dist is not None else None)
            version = __version__ if bundled else (dist.version if dist is not None else None)
            scope = self.scopes.get(name)
            out.append(PluginInfo(name=_display_name(name, plugin), hooks=hooks, distribution=distribution,
                                  version=version, stores=tuple(sorted(scope)) if scope is not None else None,
                                  bundled=bundled))
        return sorted(out, key=lambda p: (not p.bundled, p.name))


def plugin_label(impl: pluggy.HookImpl) -> str:
    """The plugin's registered name, or for one registered without a name its module or class name."""
    return _display_name(impl.plugin_name, impl.plugin)


def _display_name(name: str | None, plugin: object) -> str:
    if name and not name.isdigit():
        return name
    return getattr(plugin, "__name__", None) or type(plugin).__name__


def _refused(plugin: str, hook: str, why: str) -> PluginFailed:
    log.error("%s of plugin %s refused: %s", hook, plugin, why)
    return PluginFailed(plugin, hook, f"answer refused: {why}")


# -- start-up -------------------------------------------------------------------------------------
def create_plugin_manager(
    extra_plugins: Iterable[object] = (), *, load_entrypoints: bool = True, env: Mapping[str, str] | None = None,
    settings: Any = None,
) -> Hooks:
    """Build the plugin manager: hookspecs, the bundled plugins, ``ctdd`` entry points, then ``extra_plugins``
    (plugin objects, or ``(name, plugin)`` pairs to give one a name that ``[plugins.<name>]`` can scope).

    The bundled mappings are registered in code (as datasette registers its default plugins), so an
    installation without entry points still maps contacts. ``settings``: its ``[plugins.<name>]`` tables scope
    plugins to stores.

    Raises :class:`PluginStartupError` (a ``ConfigError``) naming the plugin when an entry point cannot be
    imported, a plugin implements a hook that does not exist (a misspelt hook) or with arguments the hook does
    not have, or ``[plugins.<name>]`` names a plugin that is not installed or a bundled one.
    """
    env = os.environ if env is None else env
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = {n.strip() for n in env.get("CTDD_DISABLE_PLUGINS", "").split(",") if n.strip()}
    for name in disabled:
        pm.set_blocked(name)
    for name, module in BUNDLED.items():
        if name not in disabled:
            pm.register(module, name=name)
    if load_entrypoints:
        _load_entrypoints(pm)
    for plugin in extra_plugins:
        name, obj = plugin if isinstance(plugin, tuple) else (None, plugin)
        _guarded(pm, lambda: pm.register(obj, name=name), name or _display_name(None, obj), None)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise _startup_error(pm, exc) from exc
    scopes = _scopes(pm, settings)
    trace = bool(env.get("CTDD_TRACE_PLUGINS"))
    log.info("plugins loaded: %s", ", ".join(sorted(_display_name(n, p) for n, p in pm.list_name_plugin() if p)))
    return Hooks(pm, scopes, trace=trace)


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
    """Load the ``ctdd`` entry points one by one, so that a failure names its plugin and distribution."""
    for ep in entry_points(group=PROJECT):
        dist = getattr(ep, "dist", None)
        where = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
        _guarded(pm, lambda: pm.load_setuptools_entrypoints(PROJECT, name=ep.name), ep.name,
                 f"entry point {ep.name} = {ep.value!r} of {where}")


def _guarded(pm: pluggy.PluginManager, load: Callable[[], Any], name: str, where: str | None) -> None:
    try:
        load()
    except pluggy.PluginValidationError as exc:
        raise _startup_error(pm, exc, name, where) from exc
    except Exception as exc:
        log.exception("plugin %s could not be loaded", name)
        raise PluginStartupError(f"plugin {name!r} could not be loaded ({where or 'registered in code'}): "
                                 f"{type(exc).__name__}: {exc}", plugin=name) from exc


def _startup_error(pm: pluggy.PluginManager, exc: pluggy.PluginValidationError, name: str | None = None,
                   where: str | None = None) -> PluginStartupError:
    name = name or _display_name(pm.get_name(exc.plugin), exc.plugin)
    message = str(exc)
    hooks = [h for h in dir(hookspecs) if h.startswith("ctdd_")]
    unknown = [word.strip("'\"") for word in message.split() if word.strip("'\"").startswith("ctdd_")]
    hint = ""
    for word in unknown:
        if word not in hooks:
            close = difflib.get_close_matches(word, hooks, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; the hooks are: {', '.join(hooks)}"
            break
    return PluginStartupError(f"plugin {name!r}{f' ({where})' if where else ''} is invalid: {message}{hint} "
                              "(docs/plugins.md lists every hook)", plugin=name)


def _scopes(pm: pluggy.PluginManager, settings: Any) -> dict[str, tuple[str, ...]]:
    """``[plugins.<name>] stores``, checked against the plugins registered."""
    tables = getattr(settings, "plugins", None) or {}
    names = {name for name, plugin in pm.list_name_plugin() if plugin is not None}
    scopes = {}
    for name, table in tables.items():
        if name in BUNDLED:
            raise PluginStartupError(f"plugins.{name}: {name!r} is bundled with ctdd-sync and applies to every "
                                     "store; it cannot be scoped (disable it with CTDD_DISABLE_PLUGINS instead)",
                                     plugin=name, key=f"plugins.{name}")
        if name not in names and not pm.is_blocked(name):
            close = difflib.get_close_matches(name, sorted(names - set(BUNDLED)), n=1)
            hint = f"did you mean [plugins.{close[0]}]?" if close else \
                f"installed plugins: {', '.join(sorted(names - set(BUNDLED))) or 'none'}"
            raise PluginStartupError(f"plugins.{name}: no plugin named {name!r} is installed ({hint}; a plugin's "
                                     "name is its entry-point name, see `ctdd plugins list`)",
                                     plugin=name, key=f"plugins.{name}")
        scopes[name] = tuple(table.stores)
    return scopes
