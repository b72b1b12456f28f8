"""Connection and stream limits of the gRPC server, from ``[service]`` (docs/configuration.md).

Without them a flood of idle connections could hold the server's resources until health checks timed out:
connections that never finish their handshake are closed after ``handshake_timeout_seconds``, idle ones after
``max_connection_idle_seconds``, every connection is asked to go away after ``max_connection_age_seconds``
(plus a grace for the calls in flight), at most ``max_connections`` are accepted at once, each carries at most
``max_concurrent_streams`` calls, and beyond ``max_concurrent_rpcs`` calls in the whole server a new call is
answered RESOURCE_EXHAUSTED at once instead of queueing.
"""

from __future__ import annotations

from ctdd.config.model import ServiceConfig


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def connection_options(service: ServiceConfig) -> list[tuple[str, int]]:
    """grpc channel arguments of the server for these limits."""
    return [
        ("grpc.max_allowed_incoming_connections", service.max_connections),
        ("grpc.max_concurrent_streams", service.max_concurrent_streams),
        ("grpc.server_handshake_timeout_ms", _ms(service.handshake_timeout_seconds)),
        ("grpc.max_connection_idle_ms", _ms(service.max_connection_idle_seconds)),
        ("grpc.max_connection_age_ms", _ms(service.max_connection_age_seconds)),
        ("grpc.max_connection_age_grace_ms", int(service.max_connection_age_grace_seconds * 1000)),
        ("grpc.keepalive_time_ms", _ms(service.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", _ms(service.keepalive_timeout_seconds)),
    ]
