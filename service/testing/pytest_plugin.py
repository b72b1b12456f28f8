"""pytest plugin for ctdd-sync plugin authors, shipped in the distribution (entry point ``pytest11``:
``ctdd = ctdd.testing.pytest_plugin``): installed with ctdd-sync, its fixtures are there in every test.

Fixtures:

- ``ctdd_sandbox``: the Dotdigital sandbox (:class:`ctdd.testing.dotdigital_sandbox.DotdigitalSandbox`), a
  real HTTP server on loopback that records what it receives.
- ``ctdd_service``: starts the service in-process on a temporary SQLite database, sending to ``ctdd_sandbox``,
  with the plugins given registered; returns an :class:`ctdd.testing.service.InProcessService` (``stub``:
  the gRPC client; ``sync_contact``, ``order_created``, ``wait_delivered``, ``contact``, ``insight``,
  ``rejected``, ``dead_letters``). Stopped at the end of the test::

      def test_staff_are_suppressed(ctdd_service):
          svc = ctdd_service(("acme", acme_plugin), stores={"acme-de": {}})
          assert svc.sync_contact(email="bob@acme.example").suppression_reasons

Tests are plain functions: the service runs on an event loop of its own. Modules are imported when a fixture
is used, so that loading this plugin costs a pytest run nothing.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pytest


@pytest.fixture
def ctdd_sandbox():
    """The Dotdigital sandbox, started for the test and stopped after it."""
    from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox

    with DotdigitalSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def ctdd_service(ctdd_sandbox, tmp_path) -> Callable[..., Any]:
    """``ctdd_service(*plugins, stores=None, plugins_config=None, data_fields=(), **dispatcher)``: start the
    service with ``plugins`` registered (objects or modules, or ``(name, plugin)`` pairs: the name is what
    ``[plugins.<name>] stores`` scopes). ``stores``: ``[stores.<key>]`` tables (default one store, ``uk``);
    ``plugins_config``: ``[plugins.<name>]`` tables; ``data_fields``: data fields to create in the sandbox
    (those your plugin writes; the stores' own are created)."""
    from ctdd.testing.service import InProcessService, service_settings

    started: list[InProcessService] = []

    def start(*plugins: object, stores: Mapping[str, Mapping[str, Any]] | None = None,
              plugins_config: Mapping[str, Mapping[str, Any]] | None = None, data_fields=(),
              **dispatcher: Any) -> InProcessService:
        for name in data_fields:
            ctdd_sandbox.add_data_field(name)
        settings = service_settings(tmp_path / f"ctdd-{len(started)}.db", ctdd_sandbox, stores=stores,
                                    plugins=plugins_config, **dispatcher)
        service = InProcessService(settings, ctdd_sandbox, plugins)
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        service.stop()
