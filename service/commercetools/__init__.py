"""commercetools HTTP API access: an async client, its errors, and small mapping helpers.

See ``client.py`` for the client and
``errors.py`` for error classification. Subscription deliveries are parsed by the pure
``ctdd.domain.notifications`` module; ``ctdd.testing.commercetools_fake`` is a fake API for tests.
"""

from .client import (
    DEFAULT_REGION,
    MAX_LIMIT,
    MAX_OFFSET,
    REGIONS,
    CommercetoolsClient,
    custom_object_key_for_email,
    localized,
    money_to_major,
    predicate_string,
)
from .errors import (
    CommercetoolsAuthError,
    CommercetoolsConflict,
    CommercetoolsError,
    CommercetoolsTransportError,
)

__all__ = [
    "DEFAULT_REGION",
    "MAX_LIMIT",
    "MAX_OFFSET",
    "REGIONS",
    "CommercetoolsAuthError",
    "CommercetoolsClient",
    "CommercetoolsConflict",
    "CommercetoolsError",
    "CommercetoolsTransportError",
    "custom_object_key_for_email",
    "localized",
    "money_to_major",
    "predicate_string",
]
