"""Test support: helpers (``from support import make_settings, wait_for, ...``), commercetools payloads
(``support.ct_payloads``) and a scripted gRPC SyncService for the adapter tests (``support.scripted_sync_service``)."""

from support.helpers import *  # noqa: F401,F403
from support.helpers import __all__  # noqa: F401
