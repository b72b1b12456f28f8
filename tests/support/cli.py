"""Running the real ``ctdd`` command in a subprocess, with the config a support person has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ops_config(tmp_path: Path, database_url: str) -> str:
    """A config as a support person has it: the stores and the database, no Dotdigital password (the
    commands that use it never call Dotdigital)."""
    path = tmp_path / "ctdd.toml"
    path.write_text(f"""
[service]
database_url = "{database_url}"

[accounts.main]
api_user = "apiuser@example.com"

[stores.uk]
account = "main"
commercetools_project = "shop-eu"

[stores.de]
account = "main"
commercetools_project = "shop-eu"
""")
    return str(path)


def run_ctdd(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    """``python -m ctdd <args>`` without any ``CTDD_*`` variable of the test run (``user``: the login name)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTDD_")}
    if user is not None:
        env["USER"] = user
    return subprocess.run([sys.executable, "-m", "ctdd", *args], capture_output=True, text=True, env=env, timeout=60)
