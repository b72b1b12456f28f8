"""The installed distribution: one top-level import package, ``ctdd``, and nothing named ``service`` or
``plugins``; importable and runnable from a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A new virtual environment with the ctdd-sync wheel (built from this checkout) installed without its
    dependencies; those come from the test environment through a .pth line, so nothing is downloaded."""
    tmp = tmp_path_factory.mktemp("dist")
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True, cwd=tmp, timeout=300)
    [wheel] = wheels.glob("ctdd_sync-*.whl")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, cwd=tmp, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return python, site, tmp


def test_the_only_top_level_name_is_ctdd(fresh_env):
    _, site, _ = fresh_env
    names = {p.name for p in site.iterdir()} - {"zz_test_dependencies.pth", "__pycache__"}
    assert {n for n in names if not n.endswith(".dist-info")} == {"ctdd"}
    [dist_info] = [n for n in names if n.endswith(".dist-info")]
    top_level = (site / dist_info / "top_level.txt")
    if top_level.exists():
        assert top_level.read_text().split() == ["ctdd"]


def test_the_installed_package_imports_and_runs(fresh_env):
    python, site, tmp = fresh_env
    code = ("import ctdd, ctdd.sync.v1.sync_service_pb2, ctdd.plugins.default_mapping, ctdd.cli; "
            "from ctdd import hookimpl; print(ctdd.__file__)")
    done = subprocess.run([str(python), "-c", code], cwd=tmp, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(site)
    for name in ("service", "plugins"):
        missing = subprocess.run([str(python), "-c", f"import {name}"], cwd=tmp, capture_output=True, text=True)
        assert missing.returncode != 0, f"{name} is importable from the installed distribution"
    version = subprocess.run([str(python), "-m", "ctdd", "--version"], cwd=tmp, capture_output=True, text=True,
                             timeout=120)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("ctdd-sync ")
    assert (site / "ctdd" / "py.typed").exists()
    assert list((site / "ctdd" / "db" / "migrations" / "versions").glob("0001_*.py"))
