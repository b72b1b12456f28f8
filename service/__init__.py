"""ctdd-sync: commercetools <-> Dotdigital sync service.

Plugin authors need only ``hookimpl`` from here (see ``ctdd.hooks.spec`` for the hooks)::

    from ctdd import hookimpl

    @hookimpl
    def ctdd_suppress_contact(ctx, contact, mapped):
        ...
"""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("ctdd")

__all__ = ["__version__", "hookimpl"]
