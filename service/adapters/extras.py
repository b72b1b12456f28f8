"""Optional dependencies of the middleware adapters: each comes with an extra of the ``ctdd-sync`` package, so
the core install stays small.

* ``sqs``: ``boto3`` for ``ctdd adapter sqs`` (``pip install 'ctdd-sync[sqs]'``);
* ``pubsub``: ``google-auth`` for the OIDC verification of ``ctdd adapter pubsub-push`` (a shared token works
  without it) (``pip install 'ctdd-sync[pubsub]'``).

:func:`require` imports the module or raises :class:`MissingExtra`, a configuration error that names the extra
to install (the command line prints it and exits with status 2).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ctdd.config import ConfigError


class MissingExtra(ConfigError):
    """An adapter was used without the optional dependency its extra installs."""

    def __init__(self, what: str, module: str, extra: str):
        super().__init__(f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed: "
                         f"pip install 'ctdd-sync[{extra}]'")
        self.extra = extra


def require(module: str, *, extra: str, what: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` saying ``what`` needs ``pip install 'ctdd-sync[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(what, module, extra) from None
