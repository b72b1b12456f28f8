"""The core install stays small (issue 19): boto3 comes only with the ``sqs`` extra and google-auth only with the
``pubsub`` extra, and an adapter used without its extra says which one to install.

The package's metadata is built the way ``pip install .`` builds it (setuptools' PEP 517 backend) and its
Requires-Dist lines are read: a fresh virtual environment with ``pip install .`` takes minutes here (grpcio,
SQLAlchemy, psycopg ...), while the metadata says the same thing about what ``pip install .`` pulls in, in a few
seconds. A Requires-Dist line without an ``extra == ...`` marker is what every install gets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _requires(tmp_path: Path) -> list[tuple[str, str | None]]:
    """(distribution name, extra or None) of every Requires-Dist of the package built from the work tree."""
    script = ("import sys; from setuptools import build_meta; "
              "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    metadata = (tmp_path / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    found = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            name = re.match(r"[A-Za-z0-9._-]+", line.split(":", 1)[1].strip()).group(0).lower().replace("_", "-")
            extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", line)
            found.append((name, extra.group(1) if extra else None))
    return found


def test_boto3_and_google_auth_are_only_in_their_extras(tmp_path):
    requires = _requires(tmp_path)
    core = {name for name, extra in requires if extra is None}
    assert "grpcio" in core and "email-validator" in core  # the metadata was read
    assert not core & {"boto3", "botocore", "google-auth", "requests"}, core
    assert ("boto3", "sqs") in requires and ("google-auth", "pubsub") in requires
    # the development install brings both, for the adapters' tests
    assert ("ctdd-sync", "dev") in requires


def test_the_sqs_adapter_without_boto3_names_the_extra(monkeypatch):
    from ctdd.adapters import sqs
    from ctdd.adapters.extras import MissingExtra
    from ctdd.config import ConfigError

    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 -> ImportError, as without the extra
    config = sqs.SqsAdapterConfig(queue_url="http://127.0.0.1:1/q", target="127.0.0.1:1", store_key="uk")
    with pytest.raises(MissingExtra) as missing:
        sqs.SqsAdapter(config)
    assert isinstance(missing.value, ConfigError) and missing.value.extra == "sqs"
    assert "pip install 'ctdd-sync[sqs]'" in str(missing.value) and "'boto3'" in str(missing.value)


def test_the_pubsub_oidc_check_without_google_auth_names_the_extra_and_a_token_still_works(monkeypatch):
    from ctdd.adapters import push_auth
    from ctdd.adapters.extras import MissingExtra

    monkeypatch.setattr(push_auth, "id_token", None)  # as when google-auth is not installed
    oidc = push_auth.OidcSettings(audience="https://push.example.com",
                                  service_accounts=("p@x.iam.gserviceaccount.com",))
    with pytest.raises(MissingExtra) as missing:
        push_auth.PushAuthenticator(oidc=oidc)
    assert "pip install 'ctdd-sync[pubsub]'" in str(missing.value)
    assert push_auth.PushAuthenticator(token="s3cret-token-0123456789").describe() == "shared token"


def test_the_sqs_command_without_boto3_exits_2_with_the_extra(tmp_path):
    script = ("import sys; sys.modules['boto3'] = None; from ctdd.cli.main import main; "
              "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", script, "adapter", "sqs", "--queue-url", "http://127.0.0.1:1/q",
                           "--target", "127.0.0.1:1", "--store", "uk"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "pip install 'ctdd-sync[sqs]'" in done.stderr
