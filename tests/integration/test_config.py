"""The configuration as an operator meets it, through the real ``ctdd`` command line: a bad file stops start-up
with one line naming the key and the file (exit 2, no traceback); flags over environment over file; the log
level of the file; renamed keys and flags still accepted with a warning; secrets masked by
``ctdd config check``; and ctdd.example.toml is valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import typing
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import BaseModel

from ctdd.config import (
    ConfigError,
    ConsentFieldsConfig,
    DispatcherConfig,
    Settings,
    load_settings,
    replace,
    settings_from_mapping,
)
from ctdd.config.renames import apply_renamed_keys, translate_renamed_flags

ROOT = Path(__file__).resolve().parents[2]

BASE = """
[accounts.main]
api_user = "apiuser@example.com"
password_env = "DD_PASSWORD"

[stores.uk]
account = "main"
"""

#: error kind -> (TOML appended to BASE, the key the one-line message must name)
BAD = {
    "wrong type": ('[dispatcher]\nconcurrency = "eight"\n', "dispatcher.concurrency"),
    "out of range": ("[dispatcher]\nconcurrency = 0\n", "dispatcher.concurrency"),
    "negative interval": ("[backsync]\ninterval_seconds = -5\n", "backsync.interval_seconds"),
    "unknown key": ("[dispatcher]\nconcurency = 4\n", "dispatcher.concurency"),
    "misspelt section": ("[dispacher]\nconcurrency = 4\n", "dispacher"),
    "unknown store key": ('[stores.de]\naccount = "main"\nlocal = "de-DE"\n', "stores.de.local"),
    "unknown value": ('[dispatcher]\ncoalesce = "sometimes"\n', "dispatcher.coalesce"),
    "unknown account": ('[stores.de]\naccount = "other"\n', "stores.de.account"),
    "literal password": ('[accounts.second]\napi_user = "u"\npassword = "hunter2"\n', "accounts.second.password"),
    "bad data field": ('[stores.uk.data_fields]\n"custom.x" = "THIS_NAME_IS_FAR_TOO_LONG"\n',
                       'stores.uk.data_fields."custom.x"'),
    "retrigger window beyond retention": (('[stores.uk.programs.abandoned_cart]\nprogram = 7\n'
                                           'retrigger_window_hours = 1000\n'),
                                          "stores.uk.programs.abandoned_cart.retrigger_window_hours"),
}
#: the commands run on every bad file (serve and worker, which start slower, on the issue's examples)
COMMANDS = [(kind, "config") for kind in BAD] + [(kind, "serve") for kind in ("wrong type", "out of range",
                                                                             "unknown key", "misspelt section")] + [
    ("misspelt section", "worker")]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTDD_")}
    env.update(DD_PASSWORD="dd-secret", **extra)
    return env


def ctdd(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None, code: str | None = None):
    """Run the real command line (``python -m ctdd``; with ``code``, that Python first, then ``main``)."""
    argv = [sys.executable, "-m", "ctdd", *args] if code is None else [
        sys.executable, "-c", f"{code}\nimport sys\nfrom ctdd.cli import main\nsys.exit(main(sys.argv[1:]))", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env or clean_env(), cwd=cwd, timeout=60)


def command_line(command: str, config: Path, tmp: Path) -> list[str]:
    if command == "config":
        return ["config", "check", "--config", str(config)]
    return [command, "--config", str(config), "--database-url", f"sqlite:///{tmp}/never.db"]


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Every (error kind, command) run at once: (the config file, the finished process)."""
    tmp = tmp_path_factory.mktemp("bad")
    files = {}
    for i, (kind, (snippet, _)) in enumerate(BAD.items()):
        files[kind] = tmp / f"bad-{i}.toml"
        files[kind].write_text(BASE + snippet)
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {case: pool.submit(ctdd, *command_line(case[1], files[case[0]], tmp), cwd=tmp) for case in COMMANDS}
        return {case: (files[case[0]], run.result()) for case, run in runs.items()}


def one_line(proc) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("case", COMMANDS, ids=[f"{command}-{kind}" for kind, command in COMMANDS])
def test_a_bad_config_stops_start_up_with_one_line_naming_key_and_file(bad_runs, case):
    config, proc = bad_runs[case]
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert line.startswith("ctdd: configuration error: ")
    assert BAD[case[0]][1] in line and str(config) in line
    assert "hunter2" not in line  # a refused literal password is not repeated
    assert proc.stdout == ""


def test_invalid_toml_names_the_file(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text("[dispatcher\nconcurrency = 8\n")
    proc = ctdd("config", "check", "--config", str(config))
    assert proc.returncode == 2
    line = one_line(proc)
    assert str(config) in line and "not valid TOML" in line


def test_a_bad_environment_variable_is_named(tmp_path):
    proc = ctdd("config", "check", env=clean_env(CTDD_LOG_LEVEL="loud"), cwd=tmp_path)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "service.log_level" in line and "environment variable CTDD_LOG_LEVEL" in line


def test_flags_override_environment_override_file(tmp_path):
    config = tmp_path / "ctdd.toml"
    config.write_text('[service]\nlisten = "127.0.0.1:1111"\ndatabase_url = "sqlite:///file.db"\nlog_level = "ERROR"\n'
                      + BASE.replace('password_env', 'base_url = "https://r1-api.dotdigital.com"\npassword_env'))
    env = clean_env(CTDD_LISTEN="127.0.0.1:2222", CTDD_DATABASE_URL="sqlite:///env.db",
                    CTDD_DOTDIGITAL_BASE_URL="http://127.0.0.1:9/", CTDD_GROUP_COMMIT="0")
    proc = ctdd("config", "check", "--config", str(config), "--listen", "127.0.0.1:3333", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    effective = json.loads(proc.stdout)
    service = effective["service"]
    assert (service["listen"], service["database_url"], service["log_level"]) == ("127.0.0.1:3333", "sqlite:///env.db",
                                                                                   "ERROR")
    assert service["group_commit"] is False
    assert effective["accounts"]["main"]["base_url"] == "http://127.0.0.1:9"


def _alembic_log_levels(tmp_path: Path, name: str, *flags: str, **env: str) -> set[str]:
    config = tmp_path / f"{name}.toml"
    config.write_text(f'[service]\nlog_level = "DEBUG"\ndatabase_url = "sqlite:///{tmp_path}/{name}.db"\n')
    proc = ctdd("db", "upgrade", "--config", str(config), *flags, env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr
    return {line.split()[2] for line in proc.stderr.splitlines() if " alembic." in line}


def test_the_log_level_of_the_file_is_honoured_below_environment_and_flag(tmp_path):
    with ThreadPoolExecutor(max_workers=3) as pool:
        from_file = pool.submit(_alembic_log_levels, tmp_path, "file")
        from_env = pool.submit(_alembic_log_levels, tmp_path, "env", CTDD_LOG_LEVEL="WARNING")
        from_flag = pool.submit(_alembic_log_levels, tmp_path, "flag", "--log-level", "INFO", CTDD_LOG_LEVEL="WARNING")
    assert "DEBUG" in from_file.result()  # [service] log_level = "DEBUG"
    assert from_env.result() == set()  # CTDD_LOG_LEVEL=WARNING wins over the file
    assert from_flag.result() == {"INFO"}  # --log-level wins over CTDD_LOG_LEVEL


RENAMES = ("from ctdd.config import renames\n"
           "renames.RENAMED_KEYS['dispatcher.workers'] = 'dispatcher.concurrency'\n"
           "renames.RENAMED_KEYS['stores.*.language'] = 'stores.*.locale'\n"
           "renames.RENAMED_FLAGS['--bind'] = '--listen'")


def test_a_renamed_key_or_flag_is_accepted_with_a_warning_naming_the_new_spelling(tmp_path):
    config = tmp_path / "ctdd.toml"
    config.write_text(BASE + 'language = "en-GB"\n[dispatcher]\nworkers = 3\n')
    proc = ctdd("config", "check", "--config", str(config), "--bind", "127.0.0.1:4444", "--format", "json",
                code=RENAMES)
    assert proc.returncode == 0, proc.stderr
    effective = json.loads(proc.stdout)
    assert effective["dispatcher"]["concurrency"] == 3 and effective["stores"]["uk"]["locale"] == "en-GB"
    assert effective["service"]["listen"] == "127.0.0.1:4444"
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 3 and all("deprecated" in line for line in warnings)
    assert any("dispatcher.workers" in w and "now spelt dispatcher.concurrency" in w and str(config) in w
               for w in warnings)
    assert any("stores.uk.language" in w and "now spelt stores.uk.locale" in w for w in warnings)
    assert any("--bind" in w and "now spelt --listen" in w for w in warnings)


def test_a_key_given_in_both_spellings_is_refused():
    renamed = {"dispatcher.workers": "dispatcher.concurrency"}
    with pytest.raises(ConfigError, match=r"dispatcher\.workers: renamed to dispatcher\.concurrency, which is set"):
        apply_renamed_keys({"dispatcher": {"workers": 3, "concurrency": 4}}, "x.toml", renamed)
    assert translate_renamed_flags(["serve", "--bind=h:1"], {"--bind": "--listen"}) == ["serve", "--listen=h:1"]


def test_config_check_masks_every_secret(tmp_path):
    secret_file = tmp_path / "dd-password"
    secret_file.write_text("file-secret-1\n")
    config = tmp_path / "ctdd.toml"
    config.write_text(f"""
[service]
database_url = "postgresql+psycopg://ctdd:db-secret-4@db.example.com/ctdd"

[accounts.main]
api_user = "a"
password_file = "{secret_file}"

[accounts.second]
api_user = "b"

[commercetools.shop]
client_id = "client"

[stores.uk]
account = "main"
""")
    env = clean_env(CTDD_COMMERCETOOLS_SHOP_CLIENT_SECRET="env-secret-2", CTDD_ACCOUNT_SECOND_PASSWORD="env-secret-3")
    for output in ("toml", "json"):
        proc = ctdd("config", "check", "--config", str(config), "--format", output, env=env)
        assert proc.returncode == 0, proc.stderr
        for secret in ("file-secret-1", "env-secret-2", "env-secret-3", "db-secret-4"):
            assert secret not in proc.stdout + proc.stderr
    effective = json.loads(proc.stdout)
    assert effective["accounts"]["main"]["password"] == "***" and effective["accounts"]["second"]["password"] == "***"
    assert effective["commercetools"]["shop"]["client_secret"] == "***"
    assert effective["service"]["database_url"] == "postgresql+psycopg://ctdd:***@db.example.com/ctdd"


def test_config_check_in_sandbox_mode_needs_no_credentials(tmp_path):
    config = tmp_path / "ctdd.toml"
    config.write_text('[accounts.main]\napi_user = "apiuser@example.com"\n[stores.uk]\naccount = "main"\n')
    proc = ctdd("config", "check", "--config", str(config), "--sandbox")
    assert proc.returncode == 0, proc.stderr
    effective = tomllib.loads(proc.stdout)
    assert effective["accounts"]["main"]["base_url"].startswith("http://127.0.0.1")
    assert effective["accounts"]["main"]["password"] == "***"


# -- in process ------------------------------------------------------------------------------------------------

def _keys(model: type[BaseModel]) -> set[str]:
    """Every key name of the model's tables (the names the loader fills in itself left out)."""
    names = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        names.add(name)
        inner = field.annotation
        if typing.get_origin(inner) is dict:
            inner = typing.get_args(inner)[1]
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            names |= _keys(inner)
    return names


def test_the_example_file_is_valid_and_shows_every_key():
    example = ROOT / "ctdd.example.toml"
    settings = load_settings(example, env={"DOTDIGITAL_MAIN_PASSWORD": "pw", "CT_SECRET": "secret"})
    assert settings.accounts["main"].password.get_secret_value() == "pw"
    assert settings.stores["uk-fashion"].commercetools == "main"
    assert settings.dispatcher == DispatcherConfig() and settings.stores["uk-fashion"].consent == ConsentFieldsConfig()
    text = example.read_text()
    secrets = {"password", "client_secret"}  # never in a file: named by *_env / *_file
    missing = [key for key in sorted(_keys(Settings) - secrets)
               if not any(form in text for form in (f"\n{key} =", f"\n# {key} =", f"[{key}]", f"[{key}.", f".{key}]"))]
    assert not missing, f"ctdd.example.toml lacks {missing}"


def test_settings_are_immutable_and_replace_validates():
    settings = settings_from_mapping(tomllib.loads(BASE), env={"DD_PASSWORD": "pw"})
    with pytest.raises(Exception):
        settings.dispatcher.concurrency = 2  # type: ignore[misc]
    assert replace(settings, group_commit=False).group_commit is False and settings.group_commit is True
    with pytest.raises(ConfigError, match="dispatcher.concurrency: must be >= 1"):
        replace(settings, dispatcher={"concurrency": 0})
    assert hash(settings.stores["uk"].consent) == hash(ConsentFieldsConfig())  # used as a set member
    assert "pw" not in repr(settings) and settings.accounts["main"].password.get_secret_value() == "pw"


def test_a_retrigger_window_longer_than_the_trigger_retention_is_refused():
    program = '[stores.uk.programs.abandoned_cart]\nprogram = 7\nretrigger_window_hours = 1000\n'
    with pytest.raises(ConfigError, match=r"^stores\.uk\.programs\.abandoned_cart\.retrigger_window_hours: "
                                          r"must be <= programs\.retention_days x 24 = 720 .*got 1000") as exc:
        settings_from_mapping(tomllib.loads(BASE + program), env={"DD_PASSWORD": "pw"})
    assert exc.value.key == "stores.uk.programs.abandoned_cart.retrigger_window_hours"
    longer = settings_from_mapping(tomllib.loads(BASE + program + "[programs]\nretention_days = 42\n"),
                                   env={"DD_PASSWORD": "pw"})
    assert longer.stores["uk"].programs["abandoned_cart"].retrigger_window_hours == 1000
    at_limit = '[stores.uk.programs.abandoned_cart]\nprogram = 7\nretrigger_window_hours = 720\n'
    settings_from_mapping(tomllib.loads(BASE + at_limit), env={"DD_PASSWORD": "pw"})


def test_a_bare_settings_object_reads_the_environment_and_the_file_it_names(tmp_path, monkeypatch):
    config = tmp_path / "ctdd.toml"
    config.write_text(BASE + '[dispatcher]\nconcurrency = 5\n')
    for name in [k for k in os.environ if k.startswith("CTDD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CTDD_CONFIG", str(config))
    monkeypatch.setenv("CTDD_ACCOUNT_MAIN_PASSWORD", "from-env")
    monkeypatch.setenv("CTDD_LISTEN", "127.0.0.1:5555")
    settings = Settings()
    assert settings.dispatcher.concurrency == 5 and settings.listen == "127.0.0.1:5555"
    assert settings.accounts["main"].password.get_secret_value() == "from-env"
