"""TLS and mutual TLS of the gRPC port, with the certificate files reloaded on change.

grpc's own mechanism does the reloading: :func:`grpc.dynamic_ssl_server_credentials` asks a *certificate
configuration fetcher* before each new connection's handshake. :class:`CertificateFiles` is that fetcher: it
looks at the files' modification time, size and inode (one ``stat`` each), and when any changed it reads and
checks them again and hands grpc the new configuration. Connections already open keep the certificate they
were made with ([service] ``max_connection_age_seconds`` bounds how long). A half-written or mismatched
replacement is logged and the previous certificate stays in use; the fetcher never raises into grpc.

Each pair is checked with the standard library's :mod:`ssl` (the key matches the certificate, the CA file
parses) before grpc sees it, so that a bad file stops start-up with a message naming its key.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass

import grpc

from ctdd.config import ConfigError

log = logging.getLogger(__name__)


class CertificateError(Exception):
    """A certificate file is missing or does not hold what it should (the message names the key)."""


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple
    configuration: object


def _stamp(paths: tuple[str, ...]) -> tuple:
    stamps = []
    for path in paths:
        info = os.stat(path)
        stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CertificateError(f"service.{key}: cannot read {path}: {exc.strerror}") from None


class CertificateFiles:
    """The server certificate, its key and (for mutual TLS) the client CA file, read when they change."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None):
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._paths = tuple(p for p in (cert_file, key_file, client_ca_file) if p)
        self._loaded: _Loaded | None = None

    @property
    def mutual(self) -> bool:
        return self.client_ca_file is not None

    def load(self) -> object:
        """Read and check the files now; grpc's certificate configuration. Raises CertificateError."""
        try:
            stamp = _stamp(self._paths)
        except OSError as exc:
            key = self._key_of(exc.filename)
            raise CertificateError(f"service.{key}: cannot read {exc.filename}: {exc.strerror}") from None
        cert = _read("tls_cert_file", self.cert_file)
        key = _read("tls_key_file", self.key_file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"service.tls_cert_file / tls_key_file: {self.cert_file} and {self.key_file} "
                                   f"are not a PEM certificate and its private key ({exc})") from None
        roots = None
        if self.client_ca_file:
            roots = _read("tls_client_ca_file", self.client_ca_file)
            try:
                context.load_verify_locations(cafile=self.client_ca_file)
            except (ssl.SSLError, ValueError) as exc:
                raise CertificateError(f"service.tls_client_ca_file: {self.client_ca_file} holds no PEM CA "
                                       f"certificate ({exc})") from None
        configuration = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)
        self._loaded = _Loaded(stamp, configuration)
        return configuration

    def _key_of(self, path: str | None) -> str:
        if path == self.key_file:
            return "tls_key_file"
        if path == self.client_ca_file:
            return "tls_client_ca_file"
        return "tls_cert_file"

    def fetch(self):
        """grpc's fetcher: a new configuration when the files changed, else None (keep the current one)."""
        try:
            if self._loaded is not None and _stamp(self._paths) == self._loaded.stamp:
                return None
            configuration = self.load()
        except (CertificateError, OSError) as exc:
            log.error("TLS certificate files not reloaded, the previous certificate stays in use: %s", exc)
            return None
        except Exception:  # never raise into grpc's handshake
            log.exception("TLS certificate files not reloaded, the previous certificate stays in use")
            return None
        log.info("TLS certificate files reloaded (%s)", self.cert_file)
        return configuration

    def server_credentials(self) -> grpc.ServerCredentials:
        """Credentials for ``add_secure_port``: the files as they are now, reloaded on change."""
        try:
            initial = self.load()
        except CertificateError as exc:
            raise ConfigError(str(exc)) from None
        return grpc.dynamic_ssl_server_credentials(initial, self.fetch,
                                                   require_client_authentication=self.mutual)
