"""How a client of the gRPC API (the adapters, the backfill) reaches an authenticated ctdd-sync: TLS with a CA
file (or the system's roots), a client certificate for mutual TLS, and a bearer token sent as
``authorization: Bearer <token>`` metadata with every call.

``ctdd adapter sqs|pubsub-push`` and ``ctdd backfill`` take ``--target-tls``, ``--target-ca-file``,
``--target-cert-file``, ``--target-key-file``, ``--target-server-name`` and ``--target-token-file`` (or the
variable ``CTDD_TARGET_TOKEN``); see docs/adapters.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import grpc

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "CTDD_TARGET_TOKEN"


class TargetSecurityError(ValueError):
    """A client TLS or token setting cannot be used (the message names the flag)."""


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TargetSecurityError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def read_token_file(path: str) -> str:
    """The first line of ``path``, stripped (how secret files are read elsewhere in ctdd)."""
    lines = _read("--target-token-file", path).decode("utf-8").splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        raise TargetSecurityError(f"--target-token-file: {path} is empty")
    return token


@dataclass(frozen=True)
class TargetSecurity:
    """TLS and token settings for the channel to the target; all empty: plaintext, no token."""

    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: TLS name to verify instead of the target's host (``grpc.ssl_target_name_override``)
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise TargetSecurityError("--target-cert-file and --target-key-file go together (a client certificate "
                                      "needs its key)")

    @property
    def uses_tls(self) -> bool:
        return self.tls or bool(self.ca_file or self.cert_file or self.server_name)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of every call: the bearer token, if any."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, target: str, options: Sequence[tuple[str, object]] = ()) -> grpc.aio.Channel:
        """A grpc.aio channel to ``target`` with these settings."""
        options = list(options)
        if not self.uses_tls:
            return grpc.aio.insecure_channel(target, options=options)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read("--target-ca-file", self.ca_file) if self.ca_file else None,
            private_key=_read("--target-key-file", self.key_file) if self.key_file else None,
            certificate_chain=_read("--target-cert-file", self.cert_file) if self.cert_file else None,
        )
        if self.server_name:
            options.append(("grpc.ssl_target_name_override", self.server_name))
        return grpc.aio.secure_channel(target, credentials, options=options)
