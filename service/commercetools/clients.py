"""The commercetools API clients of the configured ``[commercetools.<name>]`` sections, looked up per store."""

from __future__ import annotations

from typing import Any, Callable

from ctdd.config import Settings, StoreConfig


class CommercetoolsClients:
    """One commercetools API client per configured ``[commercetools.<name>]`` section, created lazily."""

    def __init__(self, settings: Settings, factory: Callable[..., Any] | None = None):
        self.settings = settings
        self._clients: dict[str, Any] = {}
        self._factory = factory

    def get(self, store: StoreConfig):
        if store.commercetools is None:
            return None
        client = self._clients.get(store.commercetools)
        if client is None:
            cfg = self.settings.commercetools[store.commercetools]
            if self._factory is None:
                from ctdd.commercetools.client import CommercetoolsClient  # httpx only when needed

                self._factory = CommercetoolsClient
            client = self._factory(project_key=cfg.project_key, client_id=cfg.client_id,
                                   client_secret=cfg.client_secret.get_secret_value(), region=cfg.region,
                                   api_url=cfg.api_url, auth_url=cfg.auth_url, scopes=list(cfg.scopes) or None)
            self._clients[store.commercetools] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
