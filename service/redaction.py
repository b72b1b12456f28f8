"""Masking of personal data in text that goes into API errors and logs.

Shared by ``ctdd.commercetools.errors`` and ``ctdd.dotdigital.errors``: both mask email addresses the
same way and keep the same kind of excerpt of a response body (white space folded, masked, at most
``EXCERPT_LIMIT`` characters). ``replace_secrets`` is the commercetools side's scrubbing of its client
secret and token; which masking applies where (secrets, phone numbers) stays with each errors module.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

__all__ = ["EMAIL_RE", "EXCERPT_LIMIT", "as_text", "excerpt", "mask_emails", "replace_secrets"]

#: Longest excerpt of a response body an error carries (the last character is "…" when cut).
EXCERPT_LIMIT = 500
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")


def mask_emails(text: str) -> str:
    """Replace every email address in ``text`` by ``<email>``."""
    return EMAIL_RE.sub("<email>", text)


def replace_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """Replace each secret of 4 characters or more in ``text`` by ``<redacted>`` (a 1-3 character
    "secret" would mangle ordinary text; empty and ``None`` ones are skipped)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "<redacted>")
    return text


def as_text(body: bytes | str) -> str:
    """A response body as text (UTF-8, undecodable bytes replaced)."""
    return body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body


def excerpt(text: str, mask: Callable[[str], str], limit: int = EXCERPT_LIMIT) -> str:
    """``text`` with white space folded, masked by ``mask``, and cut to ``limit`` characters ending in "…"."""
    text = mask(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"
