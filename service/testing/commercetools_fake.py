"""A fake commercetools project for tests: real HTTP on loopback, in-memory state (stdlib only).

Like ``dotdigital_sandbox.py``, the fake is a *real* HTTP server (``http.server.ThreadingHTTPServer``) bound
to loopback and run in a daemon thread, so code under test talks to it over real sockets exactly as it
would talk to ``https://api.{region}.commercetools.com``. One base URL serves both the OAuth endpoint and
the HTTP API: pass ``api_url=auth_url=fake.base_url`` to ``CommercetoolsClient``. The behaviour follows the
commercetools HTTP API docs (https://docs.commercetools.com/api/) and its RAML types.

Why not ``commercetools.testing``: the Python SDK's backend is a ``requests-mock`` fake (no real sockets for
an httpx client; its werkzeug server garbles ``limit``/``withTotal``), ignores ``sort`` and ``offset``, has
no customer update actions, never updates ``lastModifiedAt``, raises on ``is defined`` and crashes when a
subscription is created. Deep paging, conflict and subscription tests need all of those, and the
package would pull ``requests``, ``marshmallow`` and ``werkzeug`` into the project, so this fake is its own
small implementation.

Implemented
-----------
* ``POST /oauth/token`` - client credentials with HTTP Basic: ``401 invalid_client`` for wrong
  credentials, ``400 unsupported_grant_type`` / ``invalid_scope``; answers
  ``{access_token, expires_in, scope, token_type: "Bearer"}``. Tokens expire after ``token_ttl_seconds``
  or on ``expire_tokens()``.
* Every ``/{projectKey}/...`` call needs ``Authorization: Bearer <token>`` (``401 invalid_token``).
* ``GET /{resource}`` queries: ``where`` (repeatable, AND-ed; see ``_PredicateParser`` for the
  grammar), ``var.<name>`` input variables, ``sort`` (repeatable), ``limit`` (0-500), ``offset`` (0-10,000),
  ``withTotal``, ``expand``; ``GET /{resource}/{id}`` and ``/{resource}/key={key}`` (404 ``ResourceNotFound``).
* Creates: customers (answers ``{"customer": ...}`` like the real API), orders from a cart and via
  ``/orders/import``, carts (line items with ``externalPrice`` only), subscriptions (destination, message
  resource types and the 50-per-project limit are validated), types, payments, products,
  categories, stores; custom objects (upsert on container + key with optional version check).
* Updates ``POST /{resource}/{id|key=}`` ``{version, actions}``: a wrong version is ``409
  ConcurrentModification`` with ``currentVersion``; a successful update bumps ``version`` by one and sets
  ``lastModifiedAt``. Actions are applied atomically (all or none). Implemented actions are listed in
  ``_ACTIONS``; any other action is ``400 InvalidInput``.
* ``DELETE /{resource}/{id}?version=`` and ``GET|DELETE /custom-objects/{container}/{key}``.
* ``GET /product-projections`` is derived from stored products (``masterData.current``, or ``staged``
  with ``staged=true``) plus any projection seeded directly.
* Store-scoped endpoints ``/in-store/key={storeKey}/{carts|orders|customers}[/...]``: queries and reads see
  only that store's resources (``store.key``; customers: ``stores``), creates are assigned to the store.
* Carts: update actions ``addLineItem`` (with ``externalPrice``), ``removeLineItem``,
  ``changeLineItemQuantity``, ``setCustomerId``, ``setAnonymousId``, ``setCustomerEmail``, ``setLocale``
  (totals are recomputed); ``POST /login`` (and in-store) signs a customer in with an anonymous cart: with
  ``MergeWithExistingCustomerCart`` (the default) and an Active cart of the customer, the anonymous cart's
  line items are merged into it and the anonymous cart becomes ``Merged``; otherwise the anonymous cart
  becomes the customer's. With ``anonymousId``, the carts of that anonymous id get the customer
  (commercetools HTTP API: Customers, "Sign-in"). Fake choices: the customer's cart is updated before the
  anonymous one; a password is checked against what ``POST /customers`` stored.
* Notifications: for every subscription stored (``changes`` / ``messages`` resource types), the fake
  records what commercetools would deliver - ``ResourceCreated`` for carts created through the API, and the
  order messages ``OrderCreated`` (order from a cart), ``OrderStateChanged`` and
  ``OrderShipmentStateChanged`` - in Platform format; ``take_notifications()`` hands them out.

Test controls: ``add``/``get``/``all`` (seed and inspect state), ``requests`` (every request, with the
``Authorization`` header redacted), ``inject_fault``, ``expire_tokens`` and ``bump_version`` (a concurrent
writer). Where commercetools' behaviour is not documented the fake makes a choice and says so ("fake
choice").

Usage::

    with FakeCommercetools() as fake:
        fake.add("customers", {"email": "jane@example.com"})
        client = CommercetoolsClient(project_key=fake.project_key, client_id=fake.client_id,
                                     client_secret=fake.client_secret,
                                     api_url=fake.base_url, auth_url=fake.base_url)
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import logging
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, unquote

from ctdd.testing import loopback_http

__all__ = ["RESOURCES", "FakeCommercetools", "RecordedRequest"]

logger = logging.getLogger(__name__)

#: Resources the fake stores (plural path names).
RESOURCES = (
    "customers", "orders", "payments", "carts", "products", "product-projections", "categories",
    "subscriptions", "types", "stores", "custom-objects", "product-selections", "discount-codes",
)
#: Reference ``typeId`` -> resource path, for ``expand`` and ``setCustomType``.
_TYPE_ID_TO_RESOURCE = {
    "customer": "customers", "order": "orders", "payment": "payments", "cart": "carts", "product": "products",
    "category": "categories", "subscription": "subscriptions", "type": "types", "store": "stores",
    "key-value-document": "custom-objects", "discount-code": "discount-codes",
}
#: Resource types that can be subscribed to with messages (note that ``cart`` is not one of them).
_MESSAGE_RESOURCE_TYPE_IDS = frozenset({
    "approval-flow", "approval-rule", "associate-role", "business-unit", "category", "customer",
    "customer-email-token", "customer-group", "customer-password-token", "inventory-entry", "order", "payment",
    "product", "product-selection", "product-tailoring", "quote", "quote-request", "review", "shopping-list",
    "staged-quote", "standalone-price", "store",
})
#: Destination type -> required fields.
_DESTINATIONS: dict[str, tuple[str, ...]] = {
    "SQS": ("queueUrl", "region"),
    "SNS": ("topicArn",),
    "EventBridge": ("region", "accountId"),
    "GoogleCloudPubSub": ("projectId", "topic"),
    "AzureServiceBus": ("connectionString",),
    "EventGrid": ("uri", "accessKey"),
    "ConfluentCloud": ("bootstrapServer", "apiKey", "apiSecret", "acks", "topic"),
    "IronMQ": ("uri",),
}
MAX_SUBSCRIPTIONS = 50  # per project
MAX_LIMIT = 500
MAX_OFFSET = 10_000
TOTAL_CAP_WITH_WHERE = 10_000  # with a where predicate, total is capped at 10,000
_ORDER_STATES = ("Open", "Confirmed", "Complete", "Cancelled")
_SHIPMENT_STATES = ("Shipped", "Delivered", "Ready", "Pending", "Delayed", "Partial", "Backorder", "Canceled")
_PAYMENT_STATES = ("BalanceDue", "Failed", "Pending", "CreditOwed", "Paid")
_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{2,256}$")
_CUSTOM_OBJECT_PART_RE = re.compile(r"^[-_~.a-zA-Z0-9]{1,256}$")
_CURRENCY_EXPONENTS = {"JPY": 0, "KRW": 0, "ISK": 0, "CLP": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3,
                       "TND": 3}
_MISSING = object()


# ---------------------------------------------------------------------------------------------------
# Public data types
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordedRequest(loopback_http.RecordedRequest):
    """One request the fake received.

    ``path`` is the raw request path (percent-encoded, without the query); ``query`` the decoded query
    (``{"where": ['id > "..."'], "withTotal": ["false"]}``); ``headers`` has lower-cased names with the
    ``authorization`` value replaced by ``"<redacted>"``. ``json`` is the parsed body (``None`` if not
    JSON, e.g. the form body of the token request, which is in ``raw_body``). ``status`` 0 = dropped.
    """


_Response = loopback_http.Response


class _ApiError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


def _error(status: int, code: str, message: str, **extra: Any) -> _ApiError:
    """The commercetools error envelope ``{statusCode, message, errors: [{code, message, ...}]}``."""
    return _ApiError(_Response(status, {
        "statusCode": status, "message": message, "errors": [{"code": code, "message": message, **extra}],
    }))


def _oauth_error(status: int, error: str, description: str) -> _Response:
    """OAuth errors carry the envelope plus the OAuth 2 ``error`` / ``error_description`` fields."""
    return _Response(status, {
        "statusCode": status, "message": description,
        "errors": [{"code": error, "message": description}],
        "error": error, "error_description": description,
    }, headers={"WWW-Authenticate": f'Bearer error="{error}"'} if status == 401 else {})


def _invalid_input(message: str) -> _ApiError:
    return _error(400, "InvalidInput", message)


def _invalid_json(detail: str) -> _ApiError:
    return _error(400, "InvalidJsonInput", "Request body does not contain valid JSON.", detailedErrorMessage=detail)


def _not_found(resource: str, ident: str) -> _ApiError:
    return _error(404, "ResourceNotFound", f"The Resource with ID '{ident}' was not found.")


# ---------------------------------------------------------------------------------------------------
# The fake
# ---------------------------------------------------------------------------------------------------
class _FakeRequestHandler(loopback_http.LoopbackRequestHandler):
    server_version = "FakeCommercetools/1.0"


class FakeCommercetools(loopback_http.LoopbackServer[RecordedRequest]):
    """A commercetools project behind a loopback HTTP server (OAuth endpoint and HTTP API on one URL).

    All state (resources, tokens, recorded requests, faults) is guarded by one lock, so tests may inspect
    or change it while the server serves requests from other threads. Objects handed out by ``add``,
    ``get`` and ``all`` are deep copies. Lifecycle (``start``, ``stop``, context manager, ``base_url`` - use
    it as both ``api_url`` and ``auth_url``), the request log (``requests``, ``requests_matching``,
    ``reset_requests``), ``inject_fault`` / ``clear_faults`` and ``set_latency`` come from
    ``loopback_http.LoopbackServer``.

    Injected faults apply to the token endpoint too and are checked before authentication. ``body=None``
    sends a commercetools error envelope for the status; a ``str`` body is sent verbatim.
    """

    _thread_name = "commercetools-fake"
    _label = "commercetools fake"
    _short_label = "fake"
    _logger = logger
    _handler_class = _FakeRequestHandler
    _record_type = RecordedRequest

    def __init__(
        self,
        *,
        project_key: str = "test-project",
        client_id: str = "ct-client",
        client_secret: str = "ct-secret",
        token_ttl_seconds: int = 172800,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.project_key = project_key
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_ttl_seconds = token_ttl_seconds
        self._data: dict[str, dict[str, dict]] = {name: {} for name in RESOURCES}
        self._tokens: dict[str, tuple[float, str]] = {}  # token -> (monotonic expiry, scope)
        self._last_timestamp: datetime | None = None
        self._notifications: list[dict] = []
        self._sequence: dict[str, int] = {}
        self._selection_products: dict[str, list[str]] = {}  # product selection id -> assigned product ids

    def __repr__(self) -> str:  # never show the secret
        return (f"FakeCommercetools(base_url={self.base_url if self._server else None!r}, "
                f"project_key={self.project_key!r})")

    # -- state ----------------------------------------------------------------------------------------
    def add(self, resource: str, obj: dict) -> dict:
        """Seed a resource as stored (no validation); fills ``id``, ``version`` (1), ``createdAt`` and
        ``lastModifiedAt`` when missing. Custom objects need ``container`` and ``key``. Returns a copy."""
        self._check_resource(resource)
        obj = copy.deepcopy(obj)
        with self._lock:
            now = self._now()
            obj.setdefault("id", str(uuid.uuid4()))
            obj.setdefault("version", 1)
            obj.setdefault("createdAt", now)
            obj.setdefault("lastModifiedAt", obj["createdAt"])
            if resource == "custom-objects":
                if not obj.get("container") or not obj.get("key"):
                    raise ValueError("a custom object needs container and key")
                existing = self._custom_object(obj["container"], obj["key"])
                if existing is not None and existing["id"] != obj["id"]:
                    raise ValueError("a custom object with this container and key exists")
            self._data[resource][obj["id"]] = obj
            return copy.deepcopy(obj)

    def add_many(self, resource: str, objs: Iterable[dict], *, copy_objects: bool = True) -> int:
        """Seed many resources at once, as :meth:`add` does, under one lock and without returning copies (a
        50,000-product catalog in seconds). ``copy_objects=False`` stores the given dicts themselves: the caller
        hands them over and must not change them afterwards. Returns how many were stored."""
        self._check_resource(resource)
        if resource == "custom-objects":
            return sum(1 for obj in objs if self.add(resource, obj))
        count = 0
        with self._lock:
            now = self._now()
            table = self._data[resource]
            for obj in objs:
                obj = copy.deepcopy(obj) if copy_objects else obj
                obj.setdefault("id", str(uuid.uuid4()))
                obj.setdefault("version", 1)
                obj.setdefault("createdAt", now)
                obj.setdefault("lastModifiedAt", obj["createdAt"])
                table[obj["id"]] = obj
                count += 1
        return count

    def get(self, resource: str, id: str) -> dict | None:  # noqa: A002
        """A copy of the stored resource, or ``None``."""
        self._check_resource(resource)
        with self._lock:
            obj = self._data[resource].get(id)
            return copy.deepcopy(obj) if obj is not None else None

    def all(self, resource: str) -> list[dict]:
        """Copies of all stored resources of this kind, in insertion order."""
        self._check_resource(resource)
        with self._lock:
            return copy.deepcopy(list(self._data[resource].values()))

    def remove(self, resource: str, id: str) -> bool:  # noqa: A002
        """Delete a stored resource directly (e.g. to simulate a deletion by another client)."""
        self._check_resource(resource)
        with self._lock:
            return self._data[resource].pop(id, None) is not None

    def bump_version(self, resource: str, id: str, **changes: Any) -> dict:  # noqa: A002
        """Simulate a concurrent writer: set top-level ``changes``, bump ``version``, touch ``lastModifiedAt``."""
        self._check_resource(resource)
        with self._lock:
            obj = self._data[resource].get(id)
            if obj is None:
                raise KeyError(f"{resource}/{id} does not exist")
            obj.update(copy.deepcopy(changes))
            obj["version"] = int(obj.get("version", 0)) + 1
            obj["lastModifiedAt"] = self._now()
            return copy.deepcopy(obj)

    def take_notifications(self) -> list[dict]:
        """The notifications recorded since the last call (Platform format), oldest first."""
        with self._lock:
            taken, self._notifications = self._notifications, []
            return copy.deepcopy(taken)

    def _subscribed(self, kind: str, type_id: str, message_type: str | None = None) -> bool:
        for sub in self._data["subscriptions"].values():
            for entry in sub.get(kind) or []:
                if isinstance(entry, dict) and entry.get("resourceTypeId") == type_id and (
                        kind == "changes" or not entry.get("types") or message_type in entry["types"]):
                    return True
        return False

    def _notify_created(self, type_id: str, obj: dict) -> None:
        if self._subscribed("changes", type_id):
            self._notifications.append({
                "notificationType": "ResourceCreated", "projectKey": self.project_key,
                "resource": {"typeId": type_id, "id": obj["id"]}, "version": obj["version"],
                "modifiedAt": obj["lastModifiedAt"]})

    def _notify_message(self, type_id: str, obj: dict, message_type: str, **fields: Any) -> None:
        if not self._subscribed("messages", type_id, message_type):
            return
        seq = self._sequence[obj["id"]] = self._sequence.get(obj["id"], 0) + 1
        now = self._now()
        self._notifications.append({
            "notificationType": "Message", "projectKey": self.project_key, "id": str(uuid.uuid4()), "version": 1,
            "sequenceNumber": seq, "resource": {"typeId": type_id, "id": obj["id"]},
            "resourceVersion": obj["version"], "resourceUserProvidedIdentifiers": {}, "type": message_type,
            "createdAt": now, "lastModifiedAt": now, **copy.deepcopy(fields)})

    @staticmethod
    def _check_resource(resource: str) -> None:
        if resource not in RESOURCES:
            raise ValueError(f"unknown resource {resource!r}; expected one of {RESOURCES}")

    # -- tokens ---------------------------------------------------------------------------------------
    def expire_tokens(self) -> None:
        """Invalidate every token issued so far (the next API call gets ``401 invalid_token``)."""
        with self._lock:
            self._tokens.clear()

    @property
    def issued_tokens(self) -> int:
        """Number of currently valid tokens."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for expiry, _ in self._tokens.values() if expiry > now)

    # ==================================================================================================
    # request pipeline (handler threads)
    # ==================================================================================================
    def _now(self) -> str:
        """ISO-8601 UTC with milliseconds; strictly increasing so ``lastModifiedAt`` sorts are stable."""
        with self._lock:
            now = datetime.now(timezone.utc)
            now = now.replace(microsecond=now.microsecond // 1000 * 1000)
            if self._last_timestamp is not None and now <= self._last_timestamp:
                now = self._last_timestamp + timedelta(milliseconds=1)
            self._last_timestamp = now
            return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _fault_error_body(self, status: int, phrase: str, raw_path: str) -> Any:
        """A fault without a body answers with the commercetools error envelope for its status."""
        code = re.sub(r"[^A-Za-z0-9]", "", phrase.title()) or "General"
        return {"statusCode": status, "message": phrase, "errors": [{"code": code, "message": phrase}]}

    def _internal_error_response(self, raw_path: str) -> _Response:
        return _Response(500, {"statusCode": 500, "message": "Fake internal error",
                               "errors": [{"code": "General", "message": "Fake internal error"}]})

    def _process(self, method: str, raw_path: str, query: dict[str, list[str]], headers: dict[str, str],
                 body: bytes) -> _Response:
        try:
            if raw_path.rstrip("/") == "/oauth/token":
                if method != "POST":
                    raise _error(405, "MethodNotAllowed", "Method not allowed.")
                return self._token_endpoint(query, headers, body)
            segments = [unquote(s) for s in raw_path.strip("/").split("/")] if raw_path.strip("/") else []
            if not segments:
                raise _error(404, "ResourceNotFound", "The endpoint was not found.")
            failure = self._check_bearer(headers.get("authorization"))
            if failure is not None:
                return failure
            if segments[0] != self.project_key:
                raise _error(403, "insufficient_scope",
                             f"Insufficient scope. The token is not valid for project '{segments[0]}'.")
            with self._lock:
                return self._route(method, segments[1:], query, body)
        except _ApiError as exc:
            return exc.response

    # -- OAuth ----------------------------------------------------------------------------------------
    def _token_endpoint(self, query: dict[str, list[str]], headers: dict[str, str], body: bytes) -> _Response:
        if not loopback_http.basic_auth_matches(headers.get("authorization"), self.client_id, self.client_secret):
            return _oauth_error(401, "invalid_client",
                                "Please provide valid client credentials using HTTP Basic Authentication.")
        form = {k: list(v) for k, v in query.items()}
        try:
            for key, values in parse_qs(body.decode("utf-8"), keep_blank_values=True).items():
                form.setdefault(key, []).extend(values)
        except UnicodeDecodeError:
            return _oauth_error(400, "invalid_request", "The request body is not valid form data.")
        grant = (form.get("grant_type") or [""])[0]
        if grant != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type", f"Unsupported grant type '{grant}'.")
        requested = " ".join(form.get("scope") or []).split()
        for scope in requested:
            name, _, rest = scope.partition(":")
            if not name or rest.split(":", 1)[0] != self.project_key:
                return _oauth_error(400, "invalid_scope", f"Invalid scope '{scope}'.")
        scope = " ".join(requested) if requested else f"manage_project:{self.project_key}"
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (time.monotonic() + self.token_ttl_seconds, scope)
        return _Response(200, {"access_token": token, "expires_in": self.token_ttl_seconds, "scope": scope,
                               "token_type": "Bearer"})

    def _check_bearer(self, authorization: str | None) -> _Response | None:
        if not authorization or authorization[:7].lower() != "bearer ":
            return _oauth_error(401, "invalid_token", "Missing or malformed bearer token.")
        token = authorization[7:].strip()
        with self._lock:
            entry = self._tokens.get(token)
            if entry is not None and entry[0] <= time.monotonic():
                del self._tokens[token]
                entry = None
        if entry is None:
            return _oauth_error(401, "invalid_token", "invalid_token")
        return None

    # -- routing --------------------------------------------------------------------------------------
    def _route(self, method: str, path: list[str], query: dict[str, list[str]], body: bytes) -> _Response:
        if not path:
            raise _error(404, "ResourceNotFound", "The endpoint was not found.")
        store_key = None
        if path[0] == "in-store":
            if len(path) < 3 or not path[1].startswith("key=") or path[2] not in _IN_STORE_RESOURCES:
                raise _error(404, "ResourceNotFound", "The endpoint was not found.")
            store_key, path = path[1][4:], path[2:]
        if path == ["login"]:
            if method != "POST":
                raise _error(405, "MethodNotAllowed", "Method not allowed.")
            return _Response(200, self._sign_in(_json_body(body), store_key))
        resource, rest = path[0], path[1:]
        if store_key is not None:
            return self._route_in_store(method, store_key, resource, rest, query, body)
        if resource not in RESOURCES:
            raise _error(404, "ResourceNotFound", f"The endpoint '/{resource}' was not found.")
        if resource == "custom-objects":
            return self._route_custom_objects(method, rest, query, body)
        if resource == "orders" and rest == ["import"]:
            if method != "POST":
                raise _error(405, "MethodNotAllowed", "Method not allowed.")
            return _Response(201, self._import_order(_json_body(body)))
        if not rest:
            if method == "GET":
                return _Response(200, self._query(resource, self._candidates(resource, query), query))
            if method == "POST":
                if resource == "product-projections":
                    raise _error(405, "MethodNotAllowed", "Product projections are read-only.")
                status, created = self._create(resource, _json_body(body))
                return _Response(status, created)
            raise _error(405, "MethodNotAllowed", "Method not allowed.")
        if len(rest) != 1:
            raise _error(404, "ResourceNotFound", "The endpoint was not found.")
        obj = self._find(resource, rest[0], query)
        if method == "GET":
            result = copy.deepcopy(obj)
            self._expand(result, query.get("expand", []))
            return _Response(200, result)
        if resource == "product-projections":
            raise _error(405, "MethodNotAllowed", "Product projections are read-only.")
        if method == "POST":
            return _Response(200, self._update(resource, obj, _json_body(body)))
        if method == "DELETE":
            version = _version_param(query, required=True)
            _check_version(obj, version)
            del self._data[resource][obj["id"]]
            return _Response(200, copy.deepcopy(obj))
        raise _error(405, "MethodNotAllowed", "Method not allowed.")

    def _route_in_store(self, method: str, store_key: str, resource: str, rest: list[str],
                        query: dict[str, list[str]], body: bytes) -> _Response:
        """``/in-store/key={store}/{resource}``: the store's resources only; creates belong to the store."""
        if resource == "product-selection-assignments":
            return self._selection_assignments(method, store_key, rest, query)
        if not rest:
            if method == "GET":
                items = [o for o in self._data[resource].values() if _in_store(resource, o, store_key)]
                return _Response(200, self._query(resource, items, query))
            if method == "POST":
                draft = _json_body(body)
                if not isinstance(draft, dict):
                    raise _invalid_json("The request body must be a JSON object.")
                if resource == "customers":
                    draft = {**draft, "stores": [{"typeId": "store", "key": store_key}]}
                else:
                    draft = {**draft, "store": {"typeId": "store", "key": store_key}}
                status, created = self._create(resource, draft)
                return _Response(status, created)
            raise _error(405, "MethodNotAllowed", "Method not allowed.")
        if len(rest) != 1:
            raise _error(404, "ResourceNotFound", "The endpoint was not found.")
        obj = self._find(resource, rest[0], query)
        if not _in_store(resource, obj, store_key):
            raise _not_found(resource, rest[0])
        return self._route(method, [resource, rest[0]], query, body)

    def assign_products(self, selection_id: str, product_ids: list[str]) -> None:
        """Add products to a product selection (what the ``addProduct`` update action does)."""
        with self._lock:
            assigned = self._selection_products.setdefault(selection_id, [])
            present = set(assigned)
            assigned.extend(p for p in dict.fromkeys(product_ids) if p not in present)

    def unassign_products(self, selection_id: str, product_ids: list[str]) -> None:
        with self._lock:
            gone = set(product_ids)
            self._selection_products[selection_id] = [p for p in self._selection_products.get(selection_id, [])
                                                      if p not in gone]

    def _selection_assignments(self, method: str, store_key: str, rest: list[str],
                               query: dict[str, list[str]]) -> _Response:
        """``GET /in-store/key={store}/product-selection-assignments``: ``{product, productSelection}`` for every
        product of the store's active product selections (queryable like any resource)."""
        if method != "GET" or rest:
            raise _error(405, "MethodNotAllowed", "Method not allowed.")
        store = next((o for o in self._data["stores"].values() if o.get("key") == store_key), None)
        if store is None:
            raise _error(404, "ResourceNotFound", f"The Store with key '{store_key}' was not found.")
        items = []
        for setting in store.get("productSelections") or []:
            selection_id = (setting.get("productSelection") or {}).get("id")
            if not setting.get("active", True) or selection_id is None:
                continue
            for product_id in self._selection_products.get(selection_id, []):
                items.append({"product": {"typeId": "product", "id": product_id},
                              "productSelection": {"typeId": "product-selection", "id": selection_id}})
        return _Response(200, self._query("product-selection-assignments", items, query))

    def _find(self, resource: str, ident: str, query: dict[str, list[str]]) -> dict:
        """The stored object addressed by ``{id}`` or ``key={key}`` (404 otherwise)."""
        if resource == "product-projections":
            candidates = self._projections(query)
        else:
            candidates = list(self._data[resource].values())
        if ident.startswith("key="):
            key = ident[4:]
            for obj in candidates:
                if obj.get("key") == key:
                    return obj
            raise _error(404, "ResourceNotFound", f"The Resource with key '{key}' was not found.")
        for obj in candidates:
            if obj.get("id") == ident:
                return obj
        raise _not_found(resource, ident)

    def _candidates(self, resource: str, query: dict[str, list[str]]) -> list[dict]:
        if resource == "product-projections":
            return self._projections(query)
        return list(self._data[resource].values())

    def _projections(self, query: dict[str, list[str]]) -> list[dict]:
        """Product projections: derived from products' ``masterData`` plus directly seeded ones."""
        staged = (query.get("staged") or ["false"])[0].lower() == "true"
        out: list[dict] = []
        # a product's projection is built once per stored version (every change stores a new dict or a new
        # version); the cache holds the product itself, so its identity cannot be reused while cached
        cache: dict[tuple[str, bool], tuple] = self.__dict__.setdefault("_projection_cache", {})
        for product in self._data["products"].values():
            master = product.get("masterData")
            if not isinstance(master, dict):
                continue
            published = bool(master.get("published"))
            if not staged and not published:
                continue
            data = master.get("staged" if staged else "current")
            if not isinstance(data, dict):
                continue
            cached = cache.get((product["id"], staged))
            if cached is not None and cached[0] is product and cached[1] == product.get("version") \
                    and cached[2] is data and cached[3] == (published, product.get("lastModifiedAt")):
                out.append(cached[4])
                continue
            projection = {"id": product["id"], "version": product.get("version", 1)}
            for name in ("key", "productType", "taxCategory", "state", "priceMode", "reviewRatingStatistics"):
                if name in product:
                    projection[name] = product[name]
            projection.update(data)
            projection["published"] = published
            projection["hasStagedChanges"] = bool(master.get("hasStagedChanges"))
            projection["createdAt"] = product.get("createdAt")
            projection["lastModifiedAt"] = product.get("lastModifiedAt")
            cache[(product["id"], staged)] = (product, product.get("version"), data,
                                              (published, product.get("lastModifiedAt")), projection)
            out.append(projection)
        out.extend(self._data["product-projections"].values())
        return out

    # -- queries ---------------------------------------------------------------------------------------
    def _query(self, resource: str, items: list[dict], query: dict[str, list[str]]) -> dict:
        limit = _int_param(query, "limit", 20, 0, MAX_LIMIT)
        offset = _int_param(query, "offset", 0, 0, MAX_OFFSET)
        with_total = _bool_param(query, "withTotal", True)
        variables = {name[4:]: values for name, values in query.items() if name.startswith("var.")}
        sorts = query.get("sort", [])
        if not with_total and len(sorts) == 1 and _ID_ASC_RE.match(sorts[0]):
            return self._query_by_id(items, query, variables, limit, offset)
        predicates = []
        for text in query.get("where", []):
            try:
                predicates.append(_PredicateParser(text, variables).parse())
            except _PredicateError as exc:
                raise _invalid_input(f"Malformed parameter: where: {exc}") from None
        matched = [obj for obj in items if all(p(obj) for p in predicates)]
        for spec in reversed(query.get("sort", [])):
            matched = _sorted(matched, spec)
        page = copy.deepcopy(matched[offset:offset + limit])
        for obj in page:
            self._expand(obj, query.get("expand", []))
        result: dict[str, Any] = {"limit": limit, "offset": offset, "count": len(page)}
        if with_total:
            result["total"] = min(len(matched), TOTAL_CAP_WITH_WHERE) if predicates else len(matched)
        result["results"] = page
        return result

    def _query_by_id(self, items: list[dict], query: dict[str, list[str]], variables: dict[str, list[str]],
                     limit: int, offset: int) -> dict:
        """``sort=id asc`` without a total (paging by id): the same answer as the general path, found faster.
        The items are ordered by id, a ``id > :var`` predicate starts the page by bisection, and the other
        predicates are evaluated only until the page is full."""
        ordered = sorted((o for o in items if isinstance(o.get("id"), str)), key=lambda o: o["id"])
        ordered += [o for o in items if not isinstance(o.get("id"), str)]
        start = 0
        predicates = []
        for text in query.get("where", []):
            after = _ID_AFTER_RE.match(text)
            values = variables.get(after.group(1)) if after else None
            if after and start == 0 and values and len(values) == 1:
                start = bisect.bisect_right([o["id"] for o in ordered if isinstance(o.get("id"), str)], values[0])
                continue
            try:
                predicates.append(_PredicateParser(text, variables).parse())
            except _PredicateError as exc:
                raise _invalid_input(f"Malformed parameter: where: {exc}") from None
        matched: list[dict] = []
        for obj in ordered[start:]:
            if len(matched) >= offset + limit:
                break
            if all(p(obj) for p in predicates):
                matched.append(obj)
        page = copy.deepcopy(matched[offset:offset + limit])
        for obj in page:
            self._expand(obj, query.get("expand", []))
        return {"limit": limit, "offset": offset, "count": len(page), "results": page}

    def _expand(self, obj: dict, paths: list[str]) -> None:
        """Reference expansion: ``customerGroup``, ``paymentInfo.payments[*]``, ``lineItems[0].x``."""
        for path in paths:
            parts = [p for p in path.split(".") if p]
            if not parts:
                continue
            self._expand_parts(obj, parts)

    def _expand_parts(self, node: Any, parts: list[str]) -> None:
        match = re.fullmatch(r"([A-Za-z0-9_-]+)(?:\[(\*|\d+)\])?", parts[0])
        if match is None:
            raise _invalid_input(f"Malformed parameter: expand: '{'.'.join(parts)}'")
        if not isinstance(node, dict):
            return
        child = node.get(match.group(1))
        index = match.group(2)
        if index == "*":
            targets = child if isinstance(child, list) else []
        elif index is not None:
            targets = [child[int(index)]] if isinstance(child, list) and int(index) < len(child) else []
        else:
            targets = [child] if child is not None else []
        for target in targets:
            if len(parts) == 1:
                self._resolve_reference(target)
            else:
                if isinstance(target, dict) and "typeId" in target and "obj" not in target:
                    self._resolve_reference(target)
                self._expand_parts(target.get("obj", target) if isinstance(target, dict) else target, parts[1:])

    def _resolve_reference(self, ref: Any) -> None:
        if not isinstance(ref, dict) or not isinstance(ref.get("typeId"), str):
            return
        resource = _TYPE_ID_TO_RESOURCE.get(ref["typeId"])
        if resource is None:
            return
        for obj in self._data[resource].values():
            if ("id" in ref and obj.get("id") == ref["id"]) or ("id" not in ref and obj.get("key") == ref.get("key")):
                ref["obj"] = copy.deepcopy(obj)
                return

    # -- creates --------------------------------------------------------------------------------------
    def _base(self, draft: dict) -> dict:
        now = self._now()
        return {"id": str(uuid.uuid4()), "version": 1, "createdAt": now, "lastModifiedAt": now}

    def _check_unique_key(self, resource: str, key: Any, own_id: str | None = None) -> None:
        if key is None:
            return
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise _invalid_input(f"Invalid key '{key}': 2-256 characters of [A-Za-z0-9_-].")
        for obj in self._data[resource].values():
            if obj.get("key") == key and obj.get("id") != own_id:
                raise _error(400, "DuplicateField", f"A duplicate value '\"{key}\"' exists for field 'key'.",
                             field="key", duplicateValue=key)

    def _create(self, resource: str, draft: Any) -> tuple[int, dict]:
        if not isinstance(draft, dict):
            raise _invalid_json("The request body must be a JSON object.")
        if resource == "customers":
            return 201, {"customer": self._create_customer(draft)}
        if resource == "orders":
            return 201, self._order_from_cart(draft)
        if resource == "subscriptions":
            return 201, self._create_subscription(draft)
        if resource == "types":
            return 201, self._create_type(draft)
        if resource == "carts":
            cart = self._create_cart(draft)
            self._notify_created("cart", cart)
            return 201, cart
        # payments, products, categories, stores: stored as sent (fake choice: no draft validation).
        self._check_unique_key(resource, draft.get("key"))
        obj = self._base(draft)
        obj.update({k: copy.deepcopy(v) for k, v in draft.items() if k not in ("id", "version", "custom")})
        if "custom" in draft:
            obj["custom"] = self._custom_from_draft(draft["custom"])
        self._data[resource][obj["id"]] = obj
        return 201, copy.deepcopy(obj)

    def _create_customer(self, draft: dict) -> dict:
        """``CustomerDraft`` -> Customer."""
        email = draft.get("email")
        if not isinstance(email, str) or not email.strip():
            raise _invalid_json("email: Missing required value")
        stores = [_store_key_ref(s) for s in draft.get("stores") or []]
        self._check_email_unique(email, stores, None)
        self._check_unique_key("customers", draft.get("key"))
        customer = self._base(draft)
        skip = {"password", "stores", "addresses", "custom", "defaultShippingAddress", "defaultBillingAddress",
                "shippingAddresses", "billingAddresses", "id", "version"}
        customer.update({k: copy.deepcopy(v) for k, v in draft.items() if k not in skip})
        customer["email"] = email
        if isinstance(draft.get("password"), str):
            customer["password"] = "****" + base64.b64encode(draft["password"].encode()).decode()[-4:]
        addresses = []
        for address in draft.get("addresses") or []:
            addresses.append(_new_address(address))
        customer["addresses"] = addresses

        def address_id(index: Any) -> str:
            if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(addresses):
                raise _invalid_input(f"Invalid address index {index!r}.")
            return addresses[index]["id"]

        for name, target in (("defaultShippingAddress", "defaultShippingAddressId"),
                             ("defaultBillingAddress", "defaultBillingAddressId")):
            if draft.get(name) is not None:
                customer[target] = address_id(draft[name])
        customer["shippingAddressIds"] = [address_id(i) for i in draft.get("shippingAddresses") or []]
        customer["billingAddressIds"] = [address_id(i) for i in draft.get("billingAddresses") or []]
        customer.setdefault("isEmailVerified", False)
        customer["stores"] = stores
        customer.setdefault("authenticationMode", "Password")
        customer.setdefault("customerGroupAssignments", [])
        if "custom" in draft:
            customer["custom"] = self._custom_from_draft(draft["custom"])
        self._data["customers"][customer["id"]] = customer
        return copy.deepcopy(customer)

    def _check_email_unique(self, email: str, stores: list[dict], own_id: str | None) -> None:
        """Emails are unique (case-insensitively) among global customers and within a store (the
        exact rule is not documented - fake choice)."""
        keys = {s.get("key") for s in stores}
        for other in self._data["customers"].values():
            if other.get("id") == own_id or str(other.get("email", "")).lower() != email.lower():
                continue
            other_keys = {s.get("key") for s in other.get("stores") or [] if isinstance(s, dict)}
            if (not keys and not other_keys) or keys & other_keys:
                raise _error(400, "DuplicateField", "There is already an existing customer with the provided email.",
                             field="email", duplicateValue=email)

    def _import_order(self, draft: Any) -> dict:
        """``OrderImportDraft`` -> Order (``POST /orders/import``)."""
        if not isinstance(draft, dict):
            raise _invalid_json("The request body must be a JSON object.")
        if "totalPrice" not in draft:
            raise _invalid_json("totalPrice: Missing required value")
        order = self._base(draft)
        skip = {"lineItems", "totalPrice", "custom", "store", "id", "version"}
        order.update({k: copy.deepcopy(v) for k, v in draft.items() if k not in skip})
        order["totalPrice"] = _money(draft["totalPrice"])
        order["lineItems"] = [_import_line_item(item) for item in draft.get("lineItems") or []]
        if draft.get("store") is not None:
            order["store"] = _store_key_ref(draft["store"])
        if "custom" in draft:
            order["custom"] = self._custom_from_draft(draft["custom"])
        order.setdefault("orderState", "Open")
        if order["orderState"] not in _ORDER_STATES:
            raise _invalid_input(f"Invalid orderState '{order['orderState']}'.")
        for name, default in (("customLineItems", []), ("syncInfo", []), ("returnInfo", []), ("discountCodes", []),
                              ("directDiscounts", []), ("refusedGifts", []), ("shipping", []),
                              ("itemShippingAddresses", []), ("taxMode", "Platform"), ("inventoryMode", "None"),
                              ("shippingMode", "Single"), ("origin", "Customer")):
            order.setdefault(name, copy.deepcopy(default))
        self._check_order_number(order.get("orderNumber"))
        self._data["orders"][order["id"]] = order
        return copy.deepcopy(order)

    def _order_from_cart(self, draft: dict) -> dict:
        """``OrderFromCartDraft`` (``cart`` ResourceIdentifier + cart ``version``) -> Order; the cart becomes
        ``Ordered``."""
        ref = draft.get("cart") if isinstance(draft.get("cart"), dict) else {"id": draft.get("id")}
        cart = self._data["carts"].get(ref.get("id")) if ref.get("id") else None
        if cart is None:
            raise _error(400, "ReferencedResourceNotFound", "The referenced cart was not found.", typeId="cart")
        if not isinstance(draft.get("version"), int):
            raise _invalid_json("version: Missing required value")
        _check_version(cart, draft["version"])
        if cart.get("cartState") != "Active":
            raise _error(400, "InvalidOperation", "The cart is not active.")
        self._check_order_number(draft.get("orderNumber"))
        order = self._base(draft)
        for name, value in cart.items():
            if name not in ("id", "version", "createdAt", "lastModifiedAt", "cartState", "key",
                            "deleteDaysAfterLastModification", "type"):
                order[name] = copy.deepcopy(value)
        order["cart"] = {"typeId": "cart", "id": cart["id"]}
        order["orderState"] = draft.get("orderState", "Open")
        for name in ("orderNumber", "purchaseOrderNumber", "paymentState", "shipmentState"):
            if draft.get(name) is not None:
                order[name] = draft[name]
        for name in ("syncInfo", "returnInfo"):
            order.setdefault(name, [])
        cart["cartState"] = "Ordered"
        cart["version"] += 1
        cart["lastModifiedAt"] = self._now()
        self._data["orders"][order["id"]] = order
        self._notify_message("order", order, "OrderCreated", order=order)
        return copy.deepcopy(order)

    def _check_order_number(self, number: Any) -> None:
        if number is None:
            return
        for other in self._data["orders"].values():
            if other.get("orderNumber") == number:
                raise _error(400, "DuplicateField", f"A duplicate value '\"{number}\"' exists for field 'orderNumber'.",
                             field="orderNumber", duplicateValue=number)

    def _create_cart(self, draft: dict) -> dict:
        """``CartDraft``: ``currency`` required; line items only with an ``externalPrice`` (fake limitation:
        the fake does not select prices - seed priced carts with ``add``)."""
        currency = draft.get("currency")
        if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
            raise _invalid_json("currency: Missing required value")
        self._check_unique_key("carts", draft.get("key"))
        cart = self._base(draft)
        skip = {"currency", "lineItems", "custom", "store", "id", "version"}
        cart.update({k: copy.deepcopy(v) for k, v in draft.items() if k not in skip})
        line_items = []
        for item in draft.get("lineItems") or []:
            if not isinstance(item, dict) or "externalPrice" not in item:
                raise _invalid_input("The fake prices line items only from externalPrice; seed carts with add().")
            quantity = item.get("quantity", 1)
            line_items.append(_import_line_item({**item, "price": {"value": item["externalPrice"]},
                                                 "quantity": quantity}, price_mode="ExternalPrice"))
        cart["lineItems"] = line_items
        total = sum(li["totalPrice"]["centAmount"] for li in line_items)
        cart["totalPrice"] = _money({"currencyCode": currency, "centAmount": total})
        if line_items:
            cart["totalLineItemQuantity"] = sum(li["quantity"] for li in line_items)
        if draft.get("store") is not None:
            cart["store"] = _store_key_ref(draft["store"])
        if "custom" in draft:
            cart["custom"] = self._custom_from_draft(draft["custom"])
        for name, default in (("cartState", "Active"), ("customLineItems", []), ("discountCodes", []),
                              ("directDiscounts", []), ("refusedGifts", []), ("shipping", []),
                              ("itemShippingAddresses", []), ("taxMode", "Platform"), ("inventoryMode", "None"),
                              ("shippingMode", "Single"), ("origin", "Customer"),
                              ("priceRoundingMode", "HalfEven"), ("taxRoundingMode", "HalfEven"),
                              ("taxCalculationMode", "LineItemLevel")):
            cart.setdefault(name, copy.deepcopy(default))
        self._data["carts"][cart["id"]] = cart
        return copy.deepcopy(cart)

    def _create_subscription(self, draft: dict) -> dict:
        """``SubscriptionDraft``: destination, one of messages/changes/events, format, 50 per project."""
        if len(self._data["subscriptions"]) >= MAX_SUBSCRIPTIONS:
            raise _error(400, "MaxResourceLimitExceeded",
                         f"You have exceeded the limit of {MAX_SUBSCRIPTIONS} subscriptions.",
                         exceededResource="subscription")
        self._check_unique_key("subscriptions", draft.get("key"))
        destination = _validate_destination(draft.get("destination"))
        messages = _validate_messages(draft.get("messages"))
        changes = _validate_changes(draft.get("changes"))
        events = draft.get("events") or []
        if not isinstance(events, list):
            raise _invalid_json("events: expected an array")
        if not (messages or changes or events):
            raise _invalid_input("Either 'messages', 'changes' or 'events' must be set.")
        fmt = _validate_format(draft.get("format"), destination)
        subscription = self._base(draft)
        if draft.get("key") is not None:
            subscription["key"] = draft["key"]
        subscription.update({"destination": destination, "messages": messages, "changes": changes,
                             "events": copy.deepcopy(events), "format": fmt, "status": "Healthy"})
        self._data["subscriptions"][subscription["id"]] = subscription
        return copy.deepcopy(subscription)

    def _create_type(self, draft: dict) -> dict:
        """``TypeDraft``: ``key``, ``name``, ``resourceTypeIds`` required; field names unique."""
        for name in ("key", "name", "resourceTypeIds"):
            if draft.get(name) in (None, "", []):
                raise _invalid_json(f"{name}: Missing required value")
        self._check_unique_key("types", draft["key"])
        definitions = draft.get("fieldDefinitions") or []
        names = [d.get("name") for d in definitions if isinstance(d, dict)]
        if len(names) != len(definitions) or len(set(names)) != len(names):
            raise _error(400, "DuplicateFieldDefinitionName", "Field definition names must be unique.")
        type_ = self._base(draft)
        type_.update({k: copy.deepcopy(v) for k, v in draft.items() if k not in ("id", "version")})
        type_["fieldDefinitions"] = copy.deepcopy(definitions)
        self._data["types"][type_["id"]] = type_
        return copy.deepcopy(type_)

    def _resolve_type(self, identifier: Any) -> dict:
        if not isinstance(identifier, dict) or not (identifier.get("id") or identifier.get("key")):
            raise _invalid_json("type: expected a ResourceIdentifier with id or key")
        for type_ in self._data["types"].values():
            if identifier.get("id") == type_["id"] or (
                "id" not in identifier and identifier.get("key") == type_.get("key")
            ):
                return type_
        raise _error(400, "ReferencedResourceNotFound", "The referenced type was not found.", typeId="type",
                     **({"id": identifier["id"]} if "id" in identifier else {"key": identifier.get("key")}))

    def _custom_from_draft(self, draft: Any) -> dict:
        """``CustomFieldsDraft`` ``{type: {id|key}, fields}`` -> ``CustomFields`` ``{type: {typeId, id}, fields}``."""
        if not isinstance(draft, dict):
            raise _invalid_json("custom: expected an object")
        type_ = self._resolve_type(draft.get("type"))
        fields = {k: copy.deepcopy(v) for k, v in (draft.get("fields") or {}).items() if v is not None}
        return {"type": {"typeId": "type", "id": type_["id"]}, "fields": fields}

    # -- custom objects --------------------------------------------------------------------------------
    def _custom_object(self, container: str, key: str) -> dict | None:
        for obj in self._data["custom-objects"].values():
            if obj.get("container") == container and obj.get("key") == key:
                return obj
        return None

    def _route_custom_objects(self, method: str, rest: list[str], query: dict[str, list[str]],
                              body: bytes) -> _Response:
        if not rest:
            if method == "POST":
                return self._upsert_custom_object(_json_body(body))
            if method == "GET":
                return _Response(200, self._query("custom-objects", list(self._data["custom-objects"].values()),
                                                  query))
        elif len(rest) == 1 and method == "GET":
            items = [o for o in self._data["custom-objects"].values() if o.get("container") == rest[0]]
            return _Response(200, self._query("custom-objects", items, query))
        elif len(rest) == 2 and method in ("GET", "DELETE"):
            obj = self._custom_object(rest[0], rest[1])
            if obj is None:
                raise _error(404, "ResourceNotFound",
                             f"The CustomObject with container '{rest[0]}' and key '{rest[1]}' was not found.")
            if method == "DELETE":
                version = _version_param(query, required=False)
                if version is not None:
                    _check_version(obj, version)
                del self._data["custom-objects"][obj["id"]]
            return _Response(200, copy.deepcopy(obj))
        else:
            raise _error(404, "ResourceNotFound", "The endpoint was not found.")
        raise _error(405, "MethodNotAllowed", "Method not allowed.")

    def _upsert_custom_object(self, draft: Any) -> _Response:
        """Upsert on (container, key); ``version`` makes it a compare-and-set.

        Fake choices (undocumented upstream): ``version: 0`` means "create only if absent" (409 if the
        object exists); any other version for an absent object is a 409 as well. ``null`` fields inside
        ``value`` are dropped, as documented.
        """
        if not isinstance(draft, dict):
            raise _invalid_json("The request body must be a JSON object.")
        container, key = draft.get("container"), draft.get("key")
        for name, value in (("container", container), ("key", key)):
            if not isinstance(value, str) or not _CUSTOM_OBJECT_PART_RE.match(value):
                raise _invalid_input(f"Invalid {name}: 1-256 characters of [-_~.a-zA-Z0-9] required.")
        if "value" not in draft:
            raise _invalid_json("value: Missing required value")
        version = draft.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            raise _invalid_json("version: expected an integer")
        value = _drop_nulls(draft["value"])
        existing = self._custom_object(container, key)
        if existing is None:
            if version not in (None, 0):
                raise _error(409, "ConcurrentModification",
                             f"Object with container '{container}' and key '{key}' does not exist "
                             f"(expected version {version}).")
            obj = self._base(draft)
            obj.update({"container": container, "key": key, "value": value})
            self._data["custom-objects"][obj["id"]] = obj
            return _Response(201, copy.deepcopy(obj))
        if version is not None:
            _check_version(existing, version)
        existing["value"] = value
        existing["version"] += 1
        existing["lastModifiedAt"] = self._now()
        return _Response(200, copy.deepcopy(existing))

    # -- updates --------------------------------------------------------------------------------------
    def _update(self, resource: str, obj: dict, body: Any) -> dict:
        if not isinstance(body, dict):
            raise _invalid_json("The request body must be a JSON object.")
        version = body.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise _invalid_json("version: Missing required value")
        actions = body.get("actions")
        if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
            raise _invalid_json("actions: Missing required value")
        _check_version(obj, version)
        handlers = _ACTIONS.get(resource, {})
        updated = copy.deepcopy(obj)
        for action in actions:
            name = action.get("action")
            handler = handlers.get(name) if isinstance(name, str) else None
            if handler is None:
                raise _invalid_input(f"Unknown update action '{name}' for {resource} (not implemented by the fake "
                                     f"or not valid for this resource).")
            handler(self, resource, updated, action)
        if resource == "carts":
            _recompute_cart(updated)
        # Fake choice: every successful update request bumps the version by exactly one.
        updated["version"] = obj["version"] + 1
        updated["lastModifiedAt"] = self._now()
        self._data[resource][obj["id"]] = updated
        if resource == "orders":
            for name, message in (("orderState", "OrderStateChanged"), ("shipmentState", "OrderShipmentStateChanged")):
                if updated.get(name) != obj.get(name):
                    self._notify_message("order", updated, message, **{
                        name: updated.get(name), f"old{name[0].upper()}{name[1:]}": obj.get(name)})
        return copy.deepcopy(updated)

    # -- sign-in ------------------------------------------------------------------------------------
    def _sign_in(self, draft: Any, store_key: str | None) -> dict:
        """``CustomerSignin`` -> ``CustomerSignInResult {customer, cart?}`` (see the module docstring)."""
        if not isinstance(draft, dict) or not isinstance(draft.get("email"), str):
            raise _invalid_json("email: Missing required value")
        customer = next((c for c in self._data["customers"].values()
                         if str(c.get("email", "")).lower() == draft["email"].lower()
                         and (store_key is None or _in_store("customers", c, store_key))), None)
        stored = (customer or {}).get("password")
        given = draft.get("password")
        if customer is None or (stored is not None and (not isinstance(given, str) or stored != (
                "****" + base64.b64encode(given.encode()).decode()[-4:]))):
            raise _error(400, "InvalidCredentials", "Account with the given credentials not found.")
        anonymous_id = draft.get("anonymousId")
        ref = draft.get("anonymousCart") if isinstance(draft.get("anonymousCart"), dict) else None
        anonymous = None
        if ref is not None:
            anonymous = next((c for c in self._data["carts"].values()
                              if c.get("id") == ref.get("id") or (ref.get("key") and c.get("key") == ref["key"])), None)
            if anonymous is None or anonymous.get("cartState") != "Active":
                raise _error(400, "InvalidOperation", "The anonymous cart is not an active cart.")
            if anonymous_id and anonymous.get("anonymousId") != anonymous_id:
                raise _invalid_input("The anonymousId does not match the anonymous cart.")
        own = [c for c in self._data["carts"].values() if c.get("customerId") == customer["id"]
               and c.get("cartState") == "Active" and c is not anonymous
               and (store_key is None or _in_store("carts", c, store_key))]
        own.sort(key=lambda c: _sort_key(c.get("lastModifiedAt")))
        result_cart = own[-1] if own else None
        mode = draft.get("anonymousCartSignInMode") or "MergeWithExistingCustomerCart"
        if anonymous is not None and mode == "MergeWithExistingCustomerCart" and result_cart is not None:
            _merge_line_items(result_cart, anonymous)
            self._touch_cart(result_cart)
            anonymous["cartState"] = "Merged"
            if anonymous_id:
                anonymous["customerId"] = customer["id"]
            self._touch_cart(anonymous)
        elif anonymous is not None:
            anonymous["customerId"] = customer["id"]
            anonymous.setdefault("customerEmail", customer.get("email"))
            self._touch_cart(anonymous)
            result_cart = anonymous
        if anonymous_id:
            for cart in self._data["carts"].values():
                if cart.get("anonymousId") == anonymous_id and not cart.get("customerId"):
                    cart["customerId"] = customer["id"]
                    self._touch_cart(cart)
        out: dict[str, Any] = {"customer": copy.deepcopy(customer)}
        if result_cart is not None:
            out["cart"] = copy.deepcopy(result_cart)
        return out

    def _touch_cart(self, cart: dict) -> None:
        _recompute_cart(cart)
        cart["version"] = int(cart.get("version", 0)) + 1
        cart["lastModifiedAt"] = self._now()


# ---------------------------------------------------------------------------------------------------
# update actions
# ---------------------------------------------------------------------------------------------------
def _setter(field_name: str, *, allowed: tuple[str, ...] | None = None,
            required: bool = False) -> Callable[[FakeCommercetools, str, dict, dict], None]:
    """An action that sets (or, when the value is absent/null, removes) one top-level field."""

    def apply(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
        value = action.get(field_name)
        if value is None:
            if required:
                raise _invalid_json(f"{field_name}: Missing required value")
            obj.pop(field_name, None)
            return
        if allowed is not None and value not in allowed:
            raise _invalid_input(f"Invalid value '{value}' for {field_name}; expected one of {', '.join(allowed)}.")
        obj[field_name] = copy.deepcopy(value)

    return apply


def _set_key(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    key = action.get("key")
    if key is None:
        obj.pop("key", None)
        return
    fake._check_unique_key(resource, key, own_id=obj["id"])
    obj["key"] = key


def _change_email(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    email = action.get("email")
    if not isinstance(email, str) or not email.strip():
        raise _invalid_json("email: Missing required value")
    fake._check_email_unique(email, [s for s in obj.get("stores") or [] if isinstance(s, dict)], obj["id"])
    obj["email"] = email
    obj["isEmailVerified"] = False


def _set_custom_field(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    """``setCustomField {name, value?}``; absent/null value removes the field.

    Fake choice (lenient): on a resource without custom fields, ``custom.fields`` is created without a
    ``type``; the real API requires a Type to be set first (``setCustomType``).
    """
    name = action.get("name")
    if not isinstance(name, str) or not name:
        raise _invalid_json("name: Missing required value")
    custom = obj.setdefault("custom", {})
    fields = custom.setdefault("fields", {})
    if action.get("value") is None:
        fields.pop(name, None)
    else:
        fields[name] = copy.deepcopy(action["value"])


def _set_custom_type(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    """``setCustomType {type?, fields?}``: replaces the Type and all custom values; no type removes them."""
    if action.get("type") is None:
        obj.pop("custom", None)
        return
    obj["custom"] = fake._custom_from_draft({"type": action["type"], "fields": action.get("fields") or {}})


def _add_address(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    address = action.get("address")
    if not isinstance(address, dict):
        raise _invalid_json("address: Missing required value")
    new = _new_address(address)
    if any(a.get("id") == new["id"] or (new.get("key") and a.get("key") == new["key"])
           for a in obj.get("addresses") or []):
        raise _error(400, "DuplicateField", "An address with this id or key exists.", field="address")
    obj.setdefault("addresses", []).append(new)


def _change_destination(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    obj["destination"] = _validate_destination(action.get("destination"))
    _validate_format(obj.get("format"), obj["destination"])


def _set_messages(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    obj["messages"] = _validate_messages(action.get("messages"))


def _set_changes(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    obj["changes"] = _validate_changes(action.get("changes"))


def _set_events(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    events = action.get("events") or []
    if not isinstance(events, list):
        raise _invalid_json("events: expected an array")
    obj["events"] = copy.deepcopy(events)


def _add_field_definition(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    definition = action.get("fieldDefinition")
    if not isinstance(definition, dict) or not isinstance(definition.get("name"), str):
        raise _invalid_json("fieldDefinition: Missing required value")
    if any(d.get("name") == definition["name"] for d in obj.get("fieldDefinitions") or []):
        raise _error(400, "DuplicateFieldDefinitionName",
                     f"A field definition with name '{definition['name']}' already exists.")
    obj.setdefault("fieldDefinitions", []).append(copy.deepcopy(definition))


def _cart_line(cart: dict, action: dict) -> dict:
    line = next((li for li in cart.get("lineItems") or [] if li.get("id") == action.get("lineItemId")), None)
    if line is None:
        raise _invalid_input(f"The cart has no line item '{action.get('lineItemId')}'.")
    return line


def _add_line_item(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    """``addLineItem`` with an ``externalPrice`` (the fake selects no prices); the same product and SKU add up."""
    if "externalPrice" not in action:
        raise _invalid_input("The fake prices line items only from externalPrice; seed carts with add().")
    quantity = action.get("quantity", 1)
    new = _import_line_item({k: v for k, v in action.items() if k not in ("action", "externalPrice", "quantity")}
                            | {"price": {"value": action["externalPrice"]}, "quantity": quantity},
                            price_mode="ExternalPrice")
    _merge_line_items(obj, {"lineItems": [new]})


def _remove_line_item(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    line = _cart_line(obj, action)
    quantity = action.get("quantity")
    if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity < line["quantity"]:
        line["quantity"] -= quantity
    else:
        obj["lineItems"] = [li for li in obj["lineItems"] if li is not line]


def _change_line_item_quantity(fake: FakeCommercetools, resource: str, obj: dict, action: dict) -> None:
    line = _cart_line(obj, action)
    quantity = action.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
        raise _invalid_json("quantity: Missing required value")
    if quantity == 0:
        obj["lineItems"] = [li for li in obj["lineItems"] if li is not line]
    else:
        line["quantity"] = quantity


def _merge_line_items(into: dict, source: dict) -> None:
    """Add ``source``'s line items to ``into`` (the same product and SKU add their quantities)."""
    lines = into.setdefault("lineItems", [])
    for item in source.get("lineItems") or []:
        sku = (item.get("variant") or {}).get("sku")
        same = next((li for li in lines if li.get("productId") == item.get("productId")
                     and (li.get("variant") or {}).get("sku") == sku), None)
        if same is not None:
            same["quantity"] += item["quantity"]
        else:
            lines.append({**copy.deepcopy(item), "id": str(uuid.uuid4())})
    _recompute_cart(into)


def _recompute_cart(cart: dict) -> None:
    """Line totals (price x quantity, minus the discounted prices per quantity), the cart total and
    ``totalLineItemQuantity`` (absent without line items)."""
    currency = (cart.get("totalPrice") or {}).get("currencyCode")
    total = 0
    for li in cart.get("lineItems") or []:
        value = (li.get("price") or {}).get("value") or {}
        currency = currency or value.get("currencyCode")
        discounted = sum(p["quantity"] * p["discountedPrice"]["value"]["centAmount"]
                         for p in li.get("discountedPricePerQuantity") or [])
        undiscounted = li["quantity"] - sum(p["quantity"] for p in li.get("discountedPricePerQuantity") or [])
        cents = discounted + max(undiscounted, 0) * int(value.get("centAmount", 0))
        li["totalPrice"] = _money({"currencyCode": value.get("currencyCode") or currency, "centAmount": cents})
        total += cents
    if currency:
        cart["totalPrice"] = _money({"currencyCode": currency, "centAmount": total})
    quantity = sum(li["quantity"] for li in cart.get("lineItems") or [])
    if quantity:
        cart["totalLineItemQuantity"] = quantity
    else:
        cart.pop("totalLineItemQuantity", None)


def _in_store(resource: str, obj: dict, store_key: str) -> bool:
    if resource == "customers":
        return any(isinstance(s, dict) and s.get("key") == store_key for s in obj.get("stores") or [])
    return (obj.get("store") or {}).get("key") == store_key


_IN_STORE_RESOURCES = frozenset({"carts", "orders", "customers", "login", "product-selection-assignments"})
_CUSTOM_ACTIONS = {"setCustomField": _set_custom_field, "setCustomType": _set_custom_type}
#: resource -> update action name -> handler(fake, resource, obj copy, action)
_ACTIONS: dict[str, dict[str, Callable[[FakeCommercetools, str, dict, dict], None]]] = {
    "customers": {
        **{f"set{name[0].upper()}{name[1:]}": _setter(name) for name in (
            "firstName", "lastName", "middleName", "title", "salutation", "dateOfBirth", "companyName", "vatId",
            "locale", "externalId", "customerNumber")},
        "changeEmail": _change_email,
        "addAddress": _add_address,
        "setKey": _set_key,
        **_CUSTOM_ACTIONS,
    },
    "orders": {
        "changeOrderState": _setter("orderState", allowed=_ORDER_STATES, required=True),
        "changeShipmentState": _setter("shipmentState", allowed=_SHIPMENT_STATES),
        "changePaymentState": _setter("paymentState", allowed=_PAYMENT_STATES),
        "setCustomerEmail": _setter("customerEmail"),
        "setOrderNumber": _setter("orderNumber"),
        "setLocale": _setter("locale"),
        **_CUSTOM_ACTIONS,
    },
    "subscriptions": {
        "changeDestination": _change_destination,
        "setMessages": _set_messages,
        "setChanges": _set_changes,
        "setEvents": _set_events,
        "setKey": _set_key,
    },
    "types": {"addFieldDefinition": _add_field_definition, "setKey": _set_key},
    "carts": {"setCustomerEmail": _setter("customerEmail"), "setLocale": _setter("locale"), "setKey": _set_key,
              "setCustomerId": _setter("customerId"), "setAnonymousId": _setter("anonymousId"),
              "addLineItem": _add_line_item, "removeLineItem": _remove_line_item,
              "changeLineItemQuantity": _change_line_item_quantity, **_CUSTOM_ACTIONS},
    "payments": {"setKey": _set_key, **_CUSTOM_ACTIONS},
    "products": {"setKey": _set_key},
    "categories": {"setKey": _set_key, **_CUSTOM_ACTIONS},
    "stores": {"setName": _setter("name"), **_CUSTOM_ACTIONS},
}


# ---------------------------------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------------------------------
def _json_body(body: bytes) -> Any:
    if not body.strip():
        raise _invalid_json("The request body is empty.")
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise _invalid_json("The request body is not valid JSON.") from None


def _check_version(obj: dict, expected: int) -> None:
    """Optimistic locking: 409 ``ConcurrentModification`` with ``currentVersion``."""
    if obj.get("version") != expected:
        raise _error(409, "ConcurrentModification",
                     f"Object {obj.get('id')} has a different version than expected. "
                     f"Expected: {expected} - Actual: {obj.get('version')}.",
                     currentVersion=obj.get("version"))


def _version_param(query: dict[str, list[str]], *, required: bool) -> int | None:
    values = query.get("version")
    if not values:
        if required:
            raise _invalid_input("Missing required query parameter 'version'.")
        return None
    try:
        return int(values[0])
    except ValueError:
        raise _invalid_input(f"Malformed parameter: version: '{values[0]}' is not a number.") from None


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise _invalid_input(f"Malformed parameter: {name}: '{values[0]}' is not a number.") from None
    if value < low or value > high:
        raise _invalid_input(f"Malformed parameter: {name}: must be between {low} and {high}, got {value}.")
    return value


def _bool_param(query: dict[str, list[str]], name: str, default: bool) -> bool:
    values = query.get(name)
    if not values:
        return default
    if values[0].lower() not in ("true", "false"):
        raise _invalid_input(f"Malformed parameter: {name}: expected true or false.")
    return values[0].lower() == "true"


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _store_key_ref(value: Any) -> dict:
    key = value.get("key") if isinstance(value, dict) else None
    if not isinstance(key, str) or not key:
        raise _invalid_json("store: expected a StoreResourceIdentifier with a key")
    return {"typeId": "store", "key": key}


def _new_address(address: Any) -> dict:
    if not isinstance(address, dict):
        raise _invalid_json("address: expected an object")
    if not isinstance(address.get("country"), str) or not re.fullmatch(r"[A-Z]{2}", address["country"]):
        raise _invalid_json("country: Missing required value (ISO 3166-1 alpha-2)")
    new = copy.deepcopy(address)
    new.setdefault("id", secrets.token_urlsafe(6)[:8])
    return new


def _money(draft: Any) -> dict:
    """Money draft -> ``CentPrecisionMoney``; ``fractionDigits`` defaults to the currency's minor units."""
    if not isinstance(draft, dict):
        raise _invalid_json("money: expected an object")
    currency, cents = draft.get("currencyCode"), draft.get("centAmount")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise _invalid_json("currencyCode: Missing required value")
    if isinstance(cents, bool) or not isinstance(cents, int):
        raise _invalid_json("centAmount: Missing required value")
    digits = draft.get("fractionDigits", _CURRENCY_EXPONENTS.get(currency, 2))
    money = {"type": draft.get("type", "centPrecision"), "currencyCode": currency, "centAmount": cents,
             "fractionDigits": digits}
    if money["type"] == "highPrecision" and "preciseAmount" in draft:
        money["preciseAmount"] = draft["preciseAmount"]
    return money


def _import_line_item(item: Any, *, price_mode: str = "Platform") -> dict:
    """``LineItemImportDraft`` -> LineItem: id, price, quantity, totalPrice = price x quantity."""
    if not isinstance(item, dict):
        raise _invalid_json("lineItems: expected objects")
    quantity = item.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
        raise _invalid_json("quantity: Missing required value")
    price = item.get("price")
    if not isinstance(price, dict):
        raise _invalid_json("price: Missing required value")
    value = _money(price.get("value"))
    line = {k: copy.deepcopy(v) for k, v in item.items() if k not in ("price", "externalPrice")}
    line["id"] = str(uuid.uuid4())
    line.setdefault("name", {})
    line.setdefault("variant", {})
    line["price"] = {"id": price.get("id") or str(uuid.uuid4()), **{k: copy.deepcopy(v) for k, v in price.items()
                                                                   if k not in ("id", "value")}, "value": value}
    line["quantity"] = quantity
    line["totalPrice"] = {**value, "type": "centPrecision", "centAmount": value["centAmount"] * quantity}
    line["totalPrice"].pop("preciseAmount", None)
    for name, default in (("discountedPricePerQuantity", []), ("state", []), ("taxedPricePortions", []),
                          ("perMethodTaxRate", []), ("priceMode", price_mode), ("lineItemMode", "Standard")):
        line.setdefault(name, default)
    return line


def _validate_destination(destination: Any) -> dict:
    if not isinstance(destination, dict):
        raise _invalid_json("destination: Missing required value")
    kind = destination.get("type")
    if kind not in _DESTINATIONS:
        raise _invalid_input(f"Unknown destination type '{kind}'; expected one of {', '.join(_DESTINATIONS)}.")
    for name in _DESTINATIONS[kind]:
        if destination.get(name) in (None, ""):
            raise _invalid_json(f"destination.{name}: Missing required value")
    return copy.deepcopy(destination)


def _validate_messages(messages: Any) -> list[dict]:
    messages = messages or []
    if not isinstance(messages, list):
        raise _invalid_json("messages: expected an array")
    for entry in messages:
        type_id = entry.get("resourceTypeId") if isinstance(entry, dict) else None
        if type_id not in _MESSAGE_RESOURCE_TYPE_IDS:
            raise _invalid_input(f"'{type_id}' is not a valid MessageSubscriptionResourceTypeId.")
        if not isinstance(entry.get("types", []), list):
            raise _invalid_json("messages.types: expected an array")
    return copy.deepcopy(messages)


def _validate_changes(changes: Any) -> list[dict]:
    changes = changes or []
    if not isinstance(changes, list) or not all(
        isinstance(c, dict) and isinstance(c.get("resourceTypeId"), str) for c in changes
    ):
        raise _invalid_json("changes: expected an array of {resourceTypeId}")
    return copy.deepcopy(changes)


def _validate_format(fmt: Any, destination: dict) -> dict:
    fmt = fmt if fmt is not None else {"type": "Platform"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("Platform", "CloudEvents"):
        raise _invalid_input("format.type must be Platform or CloudEvents.")
    if fmt["type"] == "CloudEvents" and fmt.get("cloudEventsVersion") != "1.0":
        raise _invalid_input("format.cloudEventsVersion must be '1.0'.")
    if destination.get("type") == "EventGrid" and fmt["type"] != "CloudEvents":
        raise _invalid_input("EventGrid destinations require the CloudEvents format.")
    return copy.deepcopy(fmt)


# ---------------------------------------------------------------------------------------------------
# sort
# ---------------------------------------------------------------------------------------------------
_ID_ASC_RE = re.compile(r"^\s*id\s+asc\s*$", re.IGNORECASE)
_ID_AFTER_RE = re.compile(r"^\s*id\s*>\s*:([A-Za-z_][A-Za-z0-9_]*)\s*$")
_SORT_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*)\s+(asc|desc)\s*$", re.IGNORECASE)


def _sorted(items: list[dict], spec: str) -> list[dict]:
    """Stable sort by one ``sort`` parameter (``path asc|desc``, dotted path); missing values come last."""
    match = _SORT_RE.match(spec)
    if match is None:
        raise _invalid_input(f"Malformed parameter: sort: '{spec}' (expected '<field> asc|desc').")
    path, descending = match.group(1).split("."), match.group(2).lower() == "desc"

    def lookup(obj: Any) -> Any:
        for part in path:
            obj = obj.get(part) if isinstance(obj, dict) else None
        return obj

    present = [o for o in items if lookup(o) is not None]
    missing = [o for o in items if lookup(o) is None]
    return sorted(present, key=lambda o: _sort_key(lookup(o)), reverse=descending) + missing


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return 0, value
    if isinstance(value, (int, float)):
        return 1, value
    if isinstance(value, str):
        moment = _as_datetime(value)
        return (2, moment) if moment is not None else (3, value)
    return 4, json.dumps(value, sort_keys=True)


_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$")


def _as_datetime(value: str) -> datetime | None:
    if not _DATETIME_RE.match(value):
        return None
    text = value.replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python < 3.11 quirks aside, trim sub-microsecond digits
        digits = re.match(r"\d+", rest).group(0)  # type: ignore[union-attr]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------
# where predicates
# ---------------------------------------------------------------------------------------------------
class _PredicateError(ValueError):
    pass


_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?(?![A-Za-z_]))
  | (?P<var>:[A-Za-z0-9]+)
  | (?P<op>>=|<=|!=|<>|=|>|<)
  | (?P<punct>[(),])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*)
""", re.VERBOSE)
_KEYWORDS = frozenset({"and", "or", "not", "in", "is", "defined", "empty", "contains", "any", "all", "true", "false"})
Predicate = Callable[[Any], bool]


class _PredicateParser:
    """Recursive-descent parser for commercetools query predicates, compiled to Python callables.

    Grammar (keywords case-insensitive)::

        expr       := and_expr ("or" and_expr)*
        and_expr   := unary ("and" unary)*
        unary      := "not" unary | "(" expr ")" | condition
        condition  := field "(" expr ")"                       -- nested: custom(fields(x = true))
                    | field op value                           -- op: = != <> > < >= <=
                    | field ["not"] "in" "(" value ("," value)* ")"
                    | field "is" ["not"] ("defined" | "empty")
                    | field "contains" ["any" | "all"] ( value | "(" value ("," value)* ")" )
        value      := "string" | number | true | false | :variable

    Semantics (fake choices where undocumented): a field holding an array matches when any element
    matches; comparisons need the same type (ISO date-time strings compare as instants), so a missing
    field matches no comparison, including ``!=``; ``is empty`` is true for an empty array.
    """

    def __init__(self, text: str, variables: dict[str, list[str]]) -> None:
        self.text = text
        self.variables = variables
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN_RE.match(text, pos)
            if match is None:
                raise _PredicateError(f"unexpected character {text[pos]!r} at position {pos}")
            pos = match.end()
            kind = match.lastgroup or ""
            if kind != "ws":
                self.tokens.append((kind, match.group(kind)))
        self.pos = 0

    # -- token helpers --------------------------------------------------------------------------------
    def _peek(self, offset: int = 0) -> tuple[str, str] | None:
        index = self.pos + offset
        return self.tokens[index] if index < len(self.tokens) else None

    def _is_keyword(self, word: str, offset: int = 0) -> bool:
        token = self._peek(offset)
        return token is not None and token[0] == "ident" and token[1].lower() == word

    def _take(self) -> tuple[str, str]:
        token = self._peek()
        if token is None:
            raise _PredicateError("unexpected end of predicate")
        self.pos += 1
        return token

    def _expect(self, kind: str, value: str | None = None) -> str:
        token = self._take()
        if token[0] != kind or (value is not None and token[1] != value):
            raise _PredicateError(f"expected {value or kind} but found {token[1]!r}")
        return token[1]

    def _expect_keyword(self, word: str) -> None:
        if not self._is_keyword(word):
            token = self._peek()
            raise _PredicateError(f"expected '{word}' but found {token[1] if token else 'end of predicate'!r}")
        self.pos += 1

    # -- grammar --------------------------------------------------------------------------------------
    def parse(self) -> Predicate:
        if not self.tokens:
            raise _PredicateError("empty predicate")
        predicate = self._or()
        if self.pos != len(self.tokens):
            raise _PredicateError(f"unexpected {self.tokens[self.pos][1]!r}")
        return predicate

    def _or(self) -> Predicate:
        parts = [self._and()]
        while self._is_keyword("or"):
            self.pos += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else (lambda obj: any(p(obj) for p in parts))

    def _and(self) -> Predicate:
        parts = [self._unary()]
        while self._is_keyword("and"):
            self.pos += 1
            parts.append(self._unary())
        return parts[0] if len(parts) == 1 else (lambda obj: all(p(obj) for p in parts))

    def _unary(self) -> Predicate:
        if self._is_keyword("not"):
            self.pos += 1
            inner = self._unary()
            return lambda obj: not inner(obj)
        token = self._peek()
        if token == ("punct", "("):
            self.pos += 1
            inner = self._or()
            self._expect("punct", ")")
            return inner
        return self._condition()

    def _condition(self) -> Predicate:
        name = self._expect("ident")
        token = self._peek()
        if token is None:
            raise _PredicateError(f"incomplete condition on '{name}'")
        if token == ("punct", "("):
            self.pos += 1
            inner = self._or()
            self._expect("punct", ")")
            return _nested(name, inner)
        if token[0] == "op":
            self.pos += 1
            return _comparison(name, token[1], self._value())
        if self._is_keyword("in") or (self._is_keyword("not") and self._is_keyword("in", 1)):
            negate = self._is_keyword("not")
            self.pos += 2 if negate else 1
            values = self._value_list()
            check = _field_test(name, lambda v: any(_equal(v, x) for x in values))
            return (lambda obj: _has_value(obj, name) and not check(obj)) if negate else check
        if self._is_keyword("is"):
            self.pos += 1
            negate = self._is_keyword("not")
            if negate:
                self.pos += 1
            if self._is_keyword("defined"):
                self.pos += 1
                return (lambda obj: not _has_value(obj, name)) if negate else (lambda obj: _has_value(obj, name))
            self._expect_keyword("empty")

            def is_empty(obj: Any) -> bool:
                value = obj.get(name, _MISSING) if isinstance(obj, dict) else _MISSING
                return isinstance(value, list) and not value

            def is_not_empty(obj: Any) -> bool:
                value = obj.get(name, _MISSING) if isinstance(obj, dict) else _MISSING
                return isinstance(value, list) and bool(value)

            return is_not_empty if negate else is_empty
        if self._is_keyword("contains"):
            self.pos += 1
            mode = "one"
            if self._is_keyword("any") or self._is_keyword("all"):
                mode = self._take()[1].lower()
            values = self._value_list() if mode != "one" else [self._value()]

            def contains(obj: Any) -> bool:
                field_value = obj.get(name) if isinstance(obj, dict) else None
                if not isinstance(field_value, list):
                    return False
                hits = [any(_equal(item, v) for item in field_value) for v in values]
                return all(hits) if mode in ("all", "one") else any(hits)

            return contains
        raise _PredicateError(f"unexpected {token[1]!r} after '{name}'")

    def _value_list(self) -> list[Any]:
        token = self._peek()
        if token is not None and token[0] == "var":  # in :ids  (a repeated var.ids parameter)
            self.pos += 1
            return list(self._variable(token[1], many=True))
        self._expect("punct", "(")
        values = [self._value()]
        while self._peek() == ("punct", ","):
            self.pos += 1
            values.append(self._value())
        self._expect("punct", ")")
        return values

    def _value(self) -> Any:
        kind, text = self._take()
        if kind == "string":
            try:
                return json.loads(text)
            except ValueError:
                return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "var":
            return self._variable(text)
        if kind == "ident" and text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _PredicateError(f"expected a value but found {text!r}")

    def _variable(self, token: str, *, many: bool = False) -> Any:
        values = self.variables.get(token[1:])
        if not values:
            raise _PredicateError(f"no value for input variable '{token}' (pass var.{token[1:]}=...)")
        return values if many else values[0]


def _has_value(obj: Any, name: str) -> bool:
    return isinstance(obj, dict) and obj.get(name) is not None


def _field_test(name: str, test: Callable[[Any], bool]) -> Predicate:
    """Apply ``test`` to the field's value, or to any element when the field is an array."""

    def predicate(obj: Any) -> bool:
        if not isinstance(obj, dict) or obj.get(name) is None:
            return False
        value = obj[name]
        if isinstance(value, list):
            return any(test(item) for item in value)
        return test(value)

    return predicate


def _nested(name: str, inner: Predicate) -> Predicate:
    def predicate(obj: Any) -> bool:
        value = obj.get(name) if isinstance(obj, dict) else None
        if isinstance(value, list):
            return any(inner(item) for item in value if isinstance(item, dict))
        return isinstance(value, dict) and inner(value)

    return predicate


def _comparable(a: Any, b: Any) -> tuple[Any, Any] | None:
    if isinstance(a, bool) or isinstance(b, bool):
        return (a, b) if isinstance(a, bool) and isinstance(b, bool) else None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a, b
    if isinstance(a, str) and isinstance(b, str):
        da, db = _as_datetime(a), _as_datetime(b)
        if da is not None and db is not None:
            return da, db
        return a, b
    return None


def _equal(a: Any, b: Any) -> bool:
    pair = _comparable(a, b)
    return pair is not None and pair[0] == pair[1]


_OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<>": lambda a, b: a != b,
    ">": lambda a, b: a > b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b,
}


def _comparison(name: str, op: str, literal: Any) -> Predicate:
    compare = _OPERATORS[op]
    if op in ("!=", "<>"):
        def not_equal(obj: Any) -> bool:
            if not isinstance(obj, dict) or obj.get(name) is None:
                return False
            value = obj[name]
            values = value if isinstance(value, list) else [value]
            return not any(_equal(v, literal) for v in values)

        return not_equal

    def test(value: Any) -> bool:
        pair = _comparable(value, literal)
        if pair is None:
            return False
        if isinstance(pair[0], bool) and op not in ("=",):
            return False
        return compare(*pair)

    return _field_test(name, test)
