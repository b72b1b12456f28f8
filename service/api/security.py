"""How the gRPC port is protected, from ``[service]``: TLS or mutual TLS (``ctdd.api.tls``), bearer tokens
(``ctdd.api.auth``), and the refusal to listen beyond loopback with neither unless ``--insecure``.

Loopback (127.0.0.0/8, ::1, ``localhost``) and unix sockets stay frictionless: plaintext and no token, as
``scripts/serve`` runs. A non-loopback address needs TLS or tokens (or ``--insecure``); TLS without mutual
TLS or tokens, and tokens without TLS, are allowed there but warned about.
"""

from __future__ import annotations

import ipaddress
import logging

import grpc

from ctdd.api.auth import AuthInterceptor, TokenRegistry, load_callers
from ctdd.api.tls import CertificateError, CertificateFiles
from ctdd.config import ConfigError
from ctdd.config.model import ServiceConfig

log = logging.getLogger(__name__)

HEALTH_SERVICE = "grpc.health.v1.Health"
REFLECTION_SERVICES = ("grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection")


def listen_host(listen: str) -> str | None:
    """The host of ``HOST:PORT`` without brackets (None for a unix socket)."""
    if listen.startswith("unix:"):
        return None
    host = listen.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(listen: str) -> bool:
    """Whether only this machine can reach ``listen`` (a loopback address or a unix socket)."""
    host = listen_host(listen)
    if host is None:
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class ServerSecurity:
    """The port's credentials and the interceptors of the server, for one ``[service]`` table."""

    def __init__(self, service: ServiceConfig, *, listen: str | None = None, caller_services=(), env=None):
        self.listen = listen or service.listen
        self.tls = (CertificateFiles(service.tls_cert_file, service.tls_key_file, service.tls_client_ca_file)
                    if service.tls_cert_file and service.tls_key_file else None)
        if self.tls is not None:
            try:
                self.tls.load()  # a missing or bad file stops start-up here, naming its key
            except CertificateError as exc:
                raise ConfigError(str(exc)) from None
        callers = load_callers(service.tokens_file, service.tokens_env, env)
        self.registry = TokenRegistry(callers) if callers else None
        open_services: list[str] = []
        if service.allow_unauthenticated_health:
            open_services.append(HEALTH_SERVICE)
        if service.allow_unauthenticated_reflection:
            open_services.extend(REFLECTION_SERVICES)
        # any known token may call these; every other service (AdminService ...) needs an operator token
        caller_services = (*caller_services, HEALTH_SERVICE, *REFLECTION_SERVICES)
        self.interceptor = (AuthInterceptor(self.registry, caller_services=caller_services,
                                            open_services=open_services)
                            if self.registry is not None else None)
        self._check_exposure(service)

    def _check_exposure(self, service: ServiceConfig) -> None:
        if is_loopback(self.listen):
            return
        if self.tls is None and self.registry is None:
            if not service.insecure:
                raise ConfigError(
                    f"refusing to listen on {self.listen} (not a loopback address) without TLS or tokens: "
                    "anyone who can reach it could call the API. Set [service] tls_cert_file and tls_key_file "
                    "(and tls_client_ca_file for mutual TLS) and/or tokens_file (docs/api.md#security), listen "
                    "on 127.0.0.1, or pass --insecure to run open on purpose")
            log.warning("INSECURE: listening on %s without TLS or tokens (--insecure): anyone who can reach it "
                        "can call the API", self.listen)
        elif self.tls is None:
            log.warning("listening on %s without TLS: bearer tokens travel in clear text", self.listen)
        elif self.registry is None and not self.tls.mutual:
            log.warning("listening on %s with TLS but without tokens or client certificates: any client that "
                        "can reach it can call the API", self.listen)

    @property
    def interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        return [self.interceptor] if self.interceptor is not None else []

    def add_port(self, server: grpc.aio.Server) -> int:
        """Bind the listen address, with TLS when configured; the port (0: failed)."""
        if self.tls is None:
            return server.add_insecure_port(self.listen)
        return server.add_secure_port(self.listen, self.tls.server_credentials())

    def describe(self) -> str:
        """For the start-up log line: ``mutual TLS, 3 tokens``."""
        parts = [("mutual TLS" if self.tls.mutual else "TLS") if self.tls else "plaintext"]
        parts.append(f"{len(self.registry)} token(s)" if self.registry else "no tokens")
        return ", ".join(parts)
