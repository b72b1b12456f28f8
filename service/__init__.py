"""ctdd-sync: commercetools <-> Dotdigital sync service.

Plugin authors need only ``hookimpl`` from here (see ``service.hookspecs`` for the hooks)::

    from service import hookimpl

    @hookimpl
    def ctdd_suppress_contact(ctx, contact, mapped):
        ...
"""

import pluggy

hookimpl = pluggy.HookimplMarker("ctdd")

__all__ = ["hookimpl"]
