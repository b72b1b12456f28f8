"""``ctdd failures``: the operator's redrive tool over everything that failed, reading the database directly.

    ctdd failures list  [--store S] [--code 401|ERROR_X] [--kind K] [--contact-id N | --email E] [--since T]
                        [--until T] [--status dead|parked|failed|rejected|skipped ...] [--limit N] [--json]
    ctdd failures show  REF [--json]
    ctdd failures retry REF... | --all-matching [filters]  [--dry-run] [--reason TEXT] [--operator NAME]
    ctdd failures skip  REF... | --all-matching [filters]  --reason TEXT [--dry-run] [--operator NAME]

References are typed: ``outbox:123`` (a dead or parked outbox message), ``inbox:45`` (a failed or rejected queued
event), ``rejected:7`` (a record refused at the API boundary; read-only). The queries and transitions are
``ctdd.delivery.redrive``'s; this module parses and prints. Times (``--since``/``--until``) are ISO 8601 (UTC
when no offset is given) or an age such as ``30m``, ``2h``, ``7d``. Exit codes: 0 done; 1 not found, or a
reference was refused or not found; 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy as sa

from ctdd.cli.loading import load_without_credentials
from ctdd.config import ConfigError
from ctdd.db.engine import create_db_engine
from ctdd.delivery import failure_view, redrive

#: argument names of ctdd.delivery.redrive -> command-line flags
_FLAGS = {"store_key": "--store", "code": "--code", "kind": "--kind", "contact_id": "--contact-id",
          "email": "--email", "since": "--since", "until": "--until", "statuses": "--status", "limit": "--limit",
          "refs": "REF", "reason": "--reason", "operator": "--operator"}
_AGE_RE = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _moment(text: str) -> datetime:
    """An ISO 8601 time (UTC unless it has an offset) or an age (``2h``: two hours ago)."""
    age = _AGE_RE.match(text.strip())
    if age:
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[age.group(2)]: int(age.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is neither an ISO 8601 time nor an age like 2h") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _filter_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="only this store's failures")
    p.add_argument("--code", default=None,
                   help="an HTTP status of an outbox message (401), or an error code in the stored error "
                        "(ERROR_CONTACT_INVALID, contacts:invalidId)")
    p.add_argument("--kind", default=None,
                   help="an outbox message kind (contact.upsert, insight.upsert, insight.delete, contact.delete, "
                        "contact.remove_from_lists), queued_event, or a rejected record's operation (SyncContact)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--contact-id", type=int, default=None, help="one contact's outbox messages (ctdd-sync's id)")
    who.add_argument("--email", default=None, help="the outbox messages of the contacts with this email address")
    p.add_argument("--since", type=_moment, default=None, help="failed at or after T (ISO 8601, or an age: 2h, 7d)")
    p.add_argument("--until", type=_moment, default=None, help="failed before T")
    p.add_argument("--status", action="append", choices=failure_view.KNOWN_STATUSES, default=None,
                   help="only this status (repeat for several; default: dead, parked, failed and rejected)")


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``ctdd failures list|show|retry|skip`` to the subcommands ``sub``."""
    failures = sub.add_parser("failures", help="what failed: list, show, retry or skip it (redrive)")
    failures_sub = failures.add_subparsers(dest="failures_command", required=True)

    ls = failures_sub.add_parser("list", help="dead and parked outbox messages, failed and rejected queued events, "
                                              "rejected records; most recent first")
    common(ls)
    _filter_flags(ls)
    ls.add_argument("--limit", type=int, default=failure_view.DEFAULT_LIMIT,
                    help=f"show at most N (default {failure_view.DEFAULT_LIMIT}, at most {failure_view.MAX_LIMIT})")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=list_command, listen=None)

    show = failures_sub.add_parser("show", help="one failure in full: codes, errors, attempts, record reference")
    common(show)
    show.add_argument("ref", help="outbox:<id>, inbox:<id> or rejected:<id>")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=show_command, listen=None)

    for name, helptext in (("retry", "send failures again, in their partition's order (dead/parked/failed -> "
                                     "pending)"),
                           ("skip", "drop failures with a reason (a final status; unblocks a parked partition)")):
        act = failures_sub.add_parser(name, help=helptext)
        common(act)
        act.add_argument("refs", nargs="*", metavar="REF", help="outbox:<id>, inbox:<id> (rejected:<id> is refused)")
        act.add_argument("--all-matching", action="store_true",
                         help="act on every failure the filters select (at most "
                              f"{failure_view.MAX_BULK} at a time) instead of REFs")
        _filter_flags(act)
        act.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
        act.add_argument("--reason", default=None, required=name == "skip",
                         help="why (recorded with each row and logged)" + ("" if name == "skip" else "; optional"))
        act.add_argument("--operator", default=None, help="who acts, for the log (default: your login name)")
        act.set_defaults(func=retry_command if name == "retry" else skip_command, listen=None)


def _engine(settings):
    engine = create_db_engine(settings.database_url)
    if not sa.inspect(engine).has_table("outbox_message"):
        engine.dispose()
        raise ConfigError("the database has no outbox_message table yet: run `ctdd db upgrade` first")
    return engine


def _filters(args: argparse.Namespace) -> failure_view.Filters:
    return failure_view.Filters(store_key=args.store, code=args.code, kind=args.kind, contact_id=args.contact_id,
                           email=args.email, since=args.since, until=args.until,
                           statuses=tuple(dict.fromkeys(args.status or ())))


def _invalid(exc: failure_view.InvalidFailureQuery) -> int:
    flag = _FLAGS.get(exc.field, "")
    print(f"ctdd failures: {flag + ': ' if flag else ''}{exc}", file=sys.stderr)
    return 2


def list_command(args: argparse.Namespace) -> int:
    settings = load_without_credentials(args)
    engine = _engine(settings)
    try:
        views, has_more = failure_view.list_failures(engine, _filters(args), limit=min(args.limit, failure_view.MAX_LIMIT),
                                                settings=settings)
    except failure_view.InvalidFailureQuery as exc:
        return _invalid(exc)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"failures": [_json(v) for v in views], "has_more": has_more}, indent=2))
        return 0
    print(f"{len(views)} failure(s)" + (" (more match: use --limit or narrow the filters)" if has_more else ""))
    if views:
        print(_table(["REF", "STATUS", "FAILED (UTC)", "STORE", "KIND", "CODE", "ATTEMPTS", "RECORD", "ERROR"],
                     [[v.ref, v.status, _iso(v.failed_at), v.store_key or "-", v.kind, _code(v), str(v.attempts),
                       _record(v), _short(v.note or _outcome_part(v.error))] for v in views]))
    return 0


def show_command(args: argparse.Namespace) -> int:
    try:
        ref = failure_view.parse_ref(args.ref)
    except failure_view.InvalidFailureQuery as exc:
        return _invalid(exc)
    settings = load_without_credentials(args)
    engine = _engine(settings)
    try:
        detail = failure_view.get_failure(engine, ref)
    finally:
        engine.dispose()
    if detail is None:
        print(f"ctdd failures: no failure {ref}", file=sys.stderr)
        return 1
    v = detail.failure
    if args.json:
        print(json.dumps({**_json(v), "attempt_log": [_attempt_json(a) for a in detail.attempts],
                          "violations": [{"field": f, "description": d} for f, d in detail.violations]}, indent=2))
        return 0
    lines = [("reference", v.ref), ("status", v.status), ("store", v.store_key or "-"), ("kind", v.kind),
             ("record", _record(v)), ("failed at", _iso(v.failed_at) or "-"), ("created at", _iso(v.created_at) or "-"),
             ("attempts", str(v.attempts))]
    if v.source == failure_view.OUTBOX:
        lines += [("contact", f"{v.contact_id} (account {v.account})"),
                  ("partition", f"{v.partition_key} sequence {v.sequence}"),
                  ("response code", str(v.response_code) if v.response_code is not None else "none")]
        if v.merged_into:
            lines.append(("merged into", f"{v.merged_into} (retried through it)"))
    if v.dedupe_key:
        lines.append(("message id", v.dedupe_key))
    if v.error_code:
        lines.append(("error code", v.error_code))
    lines.append(("reason" if v.source == failure_view.REJECTED else "last error", v.error or "-"))
    if v.note:
        lines.append(("note", v.note))
    width = max(len(label) for label, _ in lines)
    for label, value in lines:
        print(f"{label.ljust(width)}  {value}")
    if detail.violations:
        print()
        print(_table(["FIELD", "VIOLATION"], [[f, d] for f, d in detail.violations]))
    if detail.attempts:
        print()
        print(_table(["ATTEMPT", "OUTCOME", "CODE", "FINISHED (UTC)", "WORKER", "ERROR"],
                     [[str(a.attempt), a.outcome, str(a.response_code or "-"), _iso(a.finished_at), a.worker or "-",
                       _short(a.error, 100)] for a in detail.attempts]))
    return 0


def retry_command(args: argparse.Namespace) -> int:
    return _act(args, redrive.retry)


def skip_command(args: argparse.Namespace) -> int:
    return _act(args, redrive.skip)


def _act(args: argparse.Namespace, run) -> int:
    filters = _filters(args)
    if args.all_matching == bool(args.refs):
        print("ctdd failures: give REFs, or --all-matching with filters (not both)", file=sys.stderr)
        return 2
    if not args.all_matching and filters != failure_view.Filters():
        print("ctdd failures: filters select failures only with --all-matching", file=sys.stderr)
        return 2
    try:
        refs = failure_view.parse_refs(args.refs)
    except failure_view.InvalidFailureQuery as exc:
        return _invalid(exc)
    settings = load_without_credentials(args)
    engine = _engine(settings)
    try:
        report = run(engine, refs, filters=filters if args.all_matching else None,
                     operator=args.operator or _login(), reason=args.reason, dry_run=args.dry_run, settings=settings)
    except failure_view.InvalidFailureQuery as exc:
        return _invalid(exc)
    finally:
        engine.dispose()
    if report.results:
        print(_table(["REF", "OUTCOME", "STATUS", "NOTE"],
                     [[r.ref, r.outcome, r.status or "-", r.message] for r in report.results]))
    verb = "retried" if run is redrive.retry else "skipped"
    print(f"{report.changed} {'would be ' if args.dry_run else ''}{verb}"
          + (f"; more match than {failure_view.MAX_BULK}: run it again" if report.has_more else ""))
    return 1 if any(r.outcome in ("refused", "not_found") for r in report.results) else 0


# -- formatting -----------------------------------------------------------------------------------------------


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _code(view: failure_view.FailureView) -> str:
    parts = [str(view.response_code)] if view.response_code else []
    if view.error_code:
        parts.append(view.error_code)
    return " ".join(parts) or "-"


def _record(view: failure_view.FailureView) -> str:
    if not view.record_type and not view.record_id:
        return "-"
    version = f" v{view.record_version}" if view.record_version else ""
    return f"{view.record_type or '?'} {view.record_id or '?'}{version}"


def _outcome_part(error: str | None) -> str | None:
    """``"Dotdigital API error: PATCH /contacts/v3/... -> HTTP 400 code - text"`` -> ``"HTTP 400 code - text"``
    (the table's column; ``show`` prints the whole error)."""
    return error.split(" -> ", 1)[1] if error and " -> " in error else error


def _short(text: str | None, width: int = 60) -> str:
    text = " ".join((text or "-").split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _json(view: failure_view.FailureView) -> dict[str, Any]:
    data = asdict(view)
    for key in ("failed_at", "created_at"):
        data[key] = _iso(data[key]) or None
    return data


def _attempt_json(attempt: failure_view.AttemptView) -> dict[str, Any]:
    data = asdict(attempt)
    for key in ("started_at", "finished_at"):
        data[key] = _iso(data[key]) or None
    return data
