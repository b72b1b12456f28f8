"""Which ctdd store a commercetools resource is applied under (pure: no I/O).

A commercetools Subscription is project-wide: one adapter typically delivers the messages of every store of a
project and names one ``store_key`` in its TrackEvent calls. The store a record belongs to travels with the
resource, so the resource decides, among the ctdd stores bound to the same commercetools project (a ctdd
store's key is its commercetools store key):

- an **order** or a **cart** naming a store (``store.key``): that store; a store that is not configured for
  the project: none (the notification is ignored). Without a store: the caller's store.
- a **customer** with ``stores`` (store-specific): every configured store of the project it lists, the
  caller's first when it is one of them, the others in key order; none configured: none. A global customer
  (``stores`` empty): the caller's store.

Which stores a resource that names its store(s) goes to does not depend on the caller, so the same message
delivered through two adapters goes to the same stores (and is deduplicated by its message id, once for all
of them). A resource that names no store goes to the caller's store.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Collection, Mapping
from typing import Any

from ctdd.domain.echo import echo

__all__ = ["Route", "route"]

#: store keys a reason names at most
MAX_NAMED = 5


@dataclass(frozen=True)
class Route:
    """The stores a resource is applied under (the caller's first when it is one); none: ``reason`` says why."""

    store_keys: tuple[str, ...]
    reason: str = ""


def route(resource_type: str, resource: Mapping[str, Any], caller: str, project_stores: Collection[str], *,
          project: str) -> Route:
    """The ctdd stores ``resource`` (of ``resource_type``: order, cart or customer) is applied under, for a
    notification delivered with store ``caller``; ``project_stores`` are the keys of the configured stores
    bound to ``project``, the caller's commercetools project (the caller's among them)."""
    if resource_type == "customer":
        named = _keys(resource.get("stores"))
        if not named:  # a global customer
            return Route((caller,))
        targets = sorted(key for key in set(named) if key in project_stores)
        if caller in targets:
            targets.remove(caller)
            targets.insert(0, caller)
        if targets:
            return Route(tuple(targets))
        listed = ", ".join(echo(key) for key in named[:MAX_NAMED]) + (" ..." if len(named) > MAX_NAMED else "")
        if len(named) == 1:
            return Route((), f"customer of commercetools store {listed}, which is not a configured store of "
                             f"commercetools project {echo(project)}")
        return Route((), f"customer of commercetools stores {listed}, none of which is a configured store of "
                         f"commercetools project {echo(project)}")
    key = _key(resource.get("store"))
    if key is None:
        return Route((caller,))
    if key == caller or key in project_stores:
        return Route((key,))
    return Route((), f"{resource_type} of commercetools store {echo(key)}, which is not a configured store of "
                     f"commercetools project {echo(project)}")


def _key(reference: Any) -> str | None:
    """The key of a store KeyReference (``{"typeId": "store", "key": "uk"}``); None without one."""
    if isinstance(reference, Mapping) and isinstance(reference.get("key"), str) and reference["key"]:
        return reference["key"]
    return None


def _keys(references: Any) -> list[str]:
    """The store keys of a customer's ``stores``, in its order, each once."""
    found: list[str] = []
    for reference in references if isinstance(references, list) else []:
        key = _key(reference)
        if key is not None and key not in found:
            found.append(key)
    return found
