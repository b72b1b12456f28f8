"""Who may push to ``ctdd adapter pubsub-push``: a shared token, or a Google-signed OIDC token.

Two ways in, either or both configured:

- **shared token**: ``?token=<token>`` in the push endpoint URL (what Google's push documentation suggests
  for endpoints without OIDC) or ``Authorization: Bearer <token>``; compared in constant time.
- **OIDC**: an authenticated push subscription sends ``Authorization: Bearer <JWT>``, signed by Google for the
  subscription's service account. The token is verified with google-auth (signature against Google's
  published certificates, expiry, audience = ``--oidc-audience``, issuer ``accounts.google.com``), then its
  ``email`` claim must be one of the configured service accounts and ``email_verified`` true: any Google
  account can mint a token for any audience, so the audience alone proves nothing.

``check`` answers ``None`` (let in) or a :class:`Refusal`: 401 without credentials or with a token that does
not verify, 403 with a wrong shared token or a verified token of another account, 503 when Google's
certificates cannot be fetched (Pub/Sub redelivers; nothing is lost by a refusal). Refusal reasons are fixed
texts: they never contain the credential.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass

try:  # the pubsub extra: only the OIDC verification needs google-auth (ctdd.adapters.extras)
    from google.auth import exceptions as google_exceptions
    from google.auth import transport
    from google.oauth2 import id_token
except ImportError:  # pragma: no cover - exercised by an install without the extra
    google_exceptions = transport = id_token = None

log = logging.getLogger(__name__)

#: where Google publishes the PEM certificates of the keys that sign its ID tokens (google-auth's default)
GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")

_BEARER = re.compile(r"^\s*bearer\s+(\S+)\s*$", re.IGNORECASE)
_MAX_AGE = re.compile(r"max-age\s*=\s*(\d+)", re.IGNORECASE)


class InsecureConfigError(ValueError):
    """Neither a token nor OIDC is configured, and ``insecure`` was not asked for."""


@dataclass(frozen=True)
class OidcSettings:
    #: the audience the push subscription puts in its tokens (``--push-auth-token-audience``)
    audience: str
    #: the service accounts allowed to push (``--push-auth-service-account``)
    service_accounts: tuple[str, ...]
    certs_url: str = GOOGLE_CERTS_URL
    clock_skew_seconds: int = 10

    def __post_init__(self):
        if not self.audience:
            raise InsecureConfigError("OIDC needs an audience (--oidc-audience)")
        if not self.service_accounts or not all(self.service_accounts):
            raise InsecureConfigError("OIDC needs the service account of the push subscription "
                                      "(--oidc-service-account): the audience alone admits any Google account")


@dataclass(frozen=True)
class Refusal:
    status: int
    #: for the log and the answer; never contains the credential
    reason: str


class CachingRequest(transport.Request if transport is not None else object):
    """A google-auth transport that keeps successful GET answers (the signing certificates) for their
    ``Cache-Control: max-age`` (at most ``max_age_cap`` seconds), so that a push costs no certificate fetch."""

    def __init__(self, inner: transport.Request | None = None, *, default_max_age: float = 300.0,
                 max_age_cap: float = 3600.0, timeout: float = 10.0):
        if inner is None:
            from google.auth.transport.requests import Request

            inner = Request()
        self.inner = inner
        self.default_max_age = default_max_age
        self.max_age_cap = max_age_cap
        self.timeout = timeout
        self._cache: dict[str, tuple[float, float, object]] = {}  # url -> (fetched at, expires at, response)
        self._lock = threading.Lock()

    def __call__(self, url, method="GET", body=None, headers=None, timeout=None, **kwargs):
        if method != "GET" or body is not None:
            return self.inner(url, method=method, body=body, headers=headers, timeout=timeout or self.timeout, **kwargs)
        with self._lock:
            now = time.monotonic()
            cached = self._cache.get(url)
            if cached and cached[1] > now:
                return cached[2]
            response = self.inner(url, method="GET", headers=headers, timeout=timeout or self.timeout, **kwargs)
            if response.status == 200:
                match = _MAX_AGE.search(response.headers.get("cache-control", "") or "")
                max_age = min(float(match.group(1)) if match else self.default_max_age, self.max_age_cap)
                self._cache[url] = (now, now + max_age, response)
            return response

    def forget_if_older(self, url: str, seconds: float) -> bool:
        """Drop ``url`` from the cache if it was fetched more than ``seconds`` ago (a key may have rotated);
        True if it was dropped."""
        with self._lock:
            cached = self._cache.get(url)
            if cached and time.monotonic() - cached[0] > seconds:
                del self._cache[url]
                return True
            return False


def _token_reason(exc: Exception) -> str:
    """A fixed description of why google-auth refused a token (its messages may quote the token)."""
    text = str(exc).lower()
    if "expired" in text:
        return "token expired"
    if "too early" in text:
        return "token not yet valid"
    if "audience" in text:
        return "wrong audience"
    if "signature" in text or "certificate for key id" in text:
        return "bad signature"
    return "malformed token"


class PushAuthenticator:
    def __init__(self, *, token: str | None = None, oidc: OidcSettings | None = None,
                 request: transport.Request | None = None, insecure: bool = False):
        if not token and oidc is None and not insecure:
            raise InsecureConfigError("no authentication: set a token (--token or CTDD_PUBSUB_PUSH_TOKEN) or OIDC "
                                      "(--oidc-audience and --oidc-service-account), or pass --insecure")
        if oidc is not None and id_token is None:
            from ctdd.adapters.extras import MissingExtra

            raise MissingExtra("OIDC verification of Pub/Sub pushes", "google.auth", "pubsub")
        self._token = token.encode() if token else None
        self.oidc = oidc
        self._request = request if request is not None else (CachingRequest() if oidc else None)

    @property
    def open(self) -> bool:
        return self._token is None and self.oidc is None

    def describe(self) -> str:
        ways = (["shared token"] if self._token else []) + (
            [f"OIDC (audience {self.oidc.audience}, service accounts {', '.join(self.oidc.service_accounts)})"]
            if self.oidc else [])
        return " or ".join(ways) or "no authentication (--insecure)"

    async def check(self, query_token: str | None, authorization: str | None) -> Refusal | None:
        if self.open:
            return None
        match = _BEARER.match(authorization or "")
        bearer = match.group(1) if match else None
        if self._token is not None and query_token is not None:
            return None if self._same(query_token) else Refusal(403, "wrong token")
        if bearer is None:
            return Refusal(401, "malformed Authorization header" if authorization else "no credentials")
        if self._token is not None and self._same(bearer):
            return None
        if self.oidc is None:
            return Refusal(403, "wrong token")
        return await asyncio.to_thread(self._verify_oidc, bearer)

    def _same(self, given: str) -> bool:
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._token)

    def _verify_oidc(self, token: str) -> Refusal | None:
        oidc = self.oidc
        for attempt in (1, 2):
            try:
                claims = id_token.verify_token(token, self._request, audience=oidc.audience,
                                               certs_url=oidc.certs_url,
                                               clock_skew_in_seconds=oidc.clock_skew_seconds)
                break
            except google_exceptions.TransportError as exc:
                log.error("could not fetch the OIDC signing certificates from %s (%s)", oidc.certs_url,
                          type(exc).__name__)
                return Refusal(503, "signing certificates unavailable")
            except Exception as exc:  # noqa: BLE001 - anything google-auth raises for a bad token refuses it
                reason = _token_reason(exc)
                # a key Google rotated in since the certificates were cached: fetch them once more
                if (reason == "bad signature" and attempt == 1 and isinstance(self._request, CachingRequest)
                        and self._request.forget_if_older(oidc.certs_url, 30.0)):
                    continue
                return Refusal(401, reason)
        if claims.get("iss") not in GOOGLE_ISSUERS:
            return Refusal(401, "wrong issuer")
        if claims.get("email_verified") not in (True, "true"):
            return Refusal(403, "email not verified")
        if claims.get("email") not in oidc.service_accounts:
            return Refusal(403, "service account not allowed")
        return None


__all__ = ["GOOGLE_CERTS_URL", "CachingRequest", "InsecureConfigError", "OidcSettings", "PushAuthenticator",
           "Refusal"]
