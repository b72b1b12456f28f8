"""Which handler delivers each kind of outbox message: one explicit table, no registration by import.

Handlers live next to what they deliver (``contact_handlers``, ``insight_handlers``); what they receive and
return is in ``ctdd.delivery.context``.
"""

from __future__ import annotations

from ctdd.delivery.contact_handlers import deliver_contact_upsert
from ctdd.delivery.context import Delivered, DeliveryContext, Handler, contact_path
from ctdd.delivery.insight_handlers import (deliver_contact_delete, deliver_insight_delete, deliver_insight_upsert,
                                            deliver_remove_from_lists)
from ctdd.delivery.outbox import CONTACT_DELETE, CONTACT_REMOVE_FROM_LISTS, CONTACT_UPSERT, INSIGHT_DELETE, INSIGHT_UPSERT

HANDLERS: dict[str, Handler] = {
    CONTACT_UPSERT: deliver_contact_upsert,
    INSIGHT_UPSERT: deliver_insight_upsert,
    INSIGHT_DELETE: deliver_insight_delete,
    CONTACT_REMOVE_FROM_LISTS: deliver_remove_from_lists,
    CONTACT_DELETE: deliver_contact_delete,
}

__all__ = ["HANDLERS", "Delivered", "DeliveryContext", "Handler", "contact_path"]
