"""The Dotdigital clients of the configured accounts, shared by delivery, back-sync and provisioning so that
one rate budget paces every call an account makes."""

from __future__ import annotations

from typing import Mapping

from ctdd.config import AccountConfig
from ctdd.dotdigital.client import DotdigitalClient
from ctdd.dotdigital.rate_budget import BudgetTransport, RateBudget


class DotdigitalClients:
    """One client per configured Dotdigital account, created lazily, each paced by ``budget``."""

    def __init__(self, accounts: Mapping[str, AccountConfig], *, budget: RateBudget | None = None, **client_kwargs):
        self._accounts = accounts
        self._clients: dict[str, DotdigitalClient] = {}
        self._kwargs = client_kwargs
        self.budget = budget or RateBudget()

    def get(self, account: str) -> DotdigitalClient:
        client = self._clients.get(account)
        if client is None:
            cfg = self._accounts[account]
            kwargs = dict(self._kwargs)
            kwargs.setdefault("transport", BudgetTransport(self.budget, account))
            client = DotdigitalClient(
                api_user=cfg.api_user, password=cfg.password.get_secret_value(), base_url=cfg.base_url,
                region=cfg.region, discover_endpoint=cfg.discover_endpoint, timeout=cfg.timeout_seconds, **kwargs,
            )
            self._clients[account] = client
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
