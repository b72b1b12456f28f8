"""``ctdd triggers``: the support tool for program triggers, reading the database directly.

    ctdd triggers list (--email E | --customer-id ID --store KEY | --mobile M | --contact-id N)
                       [--store KEY] [--status S ...] [--limit N] [--json] [--config F] [--database-url U]
    ctdd triggers summary [--store KEY] [--json] [--config F] [--database-url U]

``list`` shows what is pending and what was decided for one contact (pending first, soonest due first, then
decided, newest first); ``summary`` counts triggers by status and skip reason and shows the enrolment calls
each account used in the last hour. The contact's identifier is printed only as it was given on the command
line, and never logged. Exit codes: 0 found (also with no triggers), 1 no such contact, 2 bad arguments or
configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from typing import Any, Callable

import sqlalchemy as sa

from ctdd.cli.loading import load_without_credentials
from ctdd.config import ConfigError
from ctdd.db.engine import create_db_engine
from ctdd.programs.queries import (
    DEFAULT_LIMIT, KNOWN_STATUSES, MAX_LIMIT, InvalidQuery, TriggerSummary, TriggerView, contact_account,
    find_contact, list_triggers, trigger_summary,
)

#: argument names of ctdd.programs.queries -> command-line flags
_FLAGS = {"email": "--email", "customer_id": "--customer-id", "store_key": "--store", "mobile": "--mobile",
          "contact_id": "--contact-id", "statuses": "--status", "limit": "--limit"}


def add_contact_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags naming one contact (exactly one of them), and ``--store`` (``ctdd.programs.queries.find_contact``)."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--email", default=None, help="the contact's email address")
    who.add_argument("--customer-id", default=None, help="the contact's commercetools customer id (needs --store)")
    who.add_argument("--mobile", default=None, help="the contact's mobile number in E.164, for example +447700900123")
    who.add_argument("--contact-id", default=None, help="ctdd-sync's contact id (SyncContact's contact_id)")
    parser.add_argument("--store", default=None,
                        help="store key: needed with --customer-id; with --email/--mobile it limits the search to "
                             "the store's Dotdigital account")


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``ctdd triggers list|summary`` to the subcommands ``sub``; ``common`` adds --config and the shared flags."""
    triggers = sub.add_parser("triggers", help="program triggers: what is pending and what was decided")
    triggers_sub = triggers.add_subparsers(dest="triggers_command", required=True)

    show = triggers_sub.add_parser(
        "list", help="the program triggers of one contact: pending ones first, then decided ones with their reason")
    common(show)
    add_contact_arguments(show)
    show.add_argument("--status", action="append", choices=KNOWN_STATUSES, default=None,
                      help="only triggers with this status (repeat for several)")
    show.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                      help=f"show at most N triggers, pending ones first (default {DEFAULT_LIMIT}, at most {MAX_LIMIT})")
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    show.set_defaults(func=list_command, listen=None)

    summary = triggers_sub.add_parser(
        "summary", help="triggers by status and skip reason, and the enrolment calls used in the last hour")
    common(summary)
    summary.add_argument("--store", default=None, help="only this store's triggers and its account's budget")
    summary.add_argument("--json", action="store_true", help="print JSON instead of a table")
    summary.set_defaults(func=summary_command, listen=None)


def _engine(settings):
    engine = create_db_engine(settings.database_url)
    if not sa.inspect(engine).has_table("program_trigger"):
        engine.dispose()
        raise ConfigError("the database has no program_trigger table yet: run `ctdd db upgrade` first")
    return engine


def _selector(args: argparse.Namespace) -> tuple[str, str]:
    """The flag and the value the contact was given by (printed as given: this is the support tool)."""
    for name in ("email", "customer_id", "mobile", "contact_id"):
        value = getattr(args, name)
        if value is not None:
            return _FLAGS[name], value
    raise AssertionError("argparse requires one selector")


def _invalid(exc: InvalidQuery) -> int:
    flag = _FLAGS.get(exc.field or "", "")
    print(f"ctdd triggers: {flag + ': ' if flag else ''}{exc}", file=sys.stderr)
    return 2


def list_command(args: argparse.Namespace) -> int:
    settings = load_without_credentials(args)
    engine = _engine(settings)
    flag, given = _selector(args)
    try:
        contact_id = find_contact(engine, email=args.email, customer_id=args.customer_id, mobile=args.mobile,
                                  contact_id=args.contact_id, store_key=args.store, settings=settings)
        if contact_id is None:
            where = f" in store {args.store}" if args.store else ""
            print(f"ctdd triggers: no contact found for {flag} {given}{where}", file=sys.stderr)
            return 1
        views = list_triggers(engine, contact_id, statuses=args.status, limit=args.limit)
        summary = trigger_summary(engine, contact_id=contact_id, settings=settings)
        account = contact_account(engine, contact_id)
    except InvalidQuery as exc:
        return _invalid(exc)
    finally:
        engine.dispose()
    matched = sum(n for status, n in summary.by_status.items() if not args.status or status in args.status)
    if args.json:
        print(json.dumps({"contact_id": contact_id, "account": account, "triggers": [_json(v) for v in views],
                          "has_more": matched > len(views), "summary": _summary_json(summary)}, indent=2))
        return 0
    to_decide = sum(1 for v in views if v.open)
    print(f"contact {contact_id} ({flag} {given}, account {account}): "
          f"{to_decide} to decide, {len(views) - to_decide} decided"
          + (f" (showing {len(views)} of {matched}: use --limit or --status)" if matched > len(views) else ""))
    if not views:
        print("no program triggers")
        return 0
    print(_table(["TIME (UTC)", "STORE", "KIND", "SUBJECT", "STEP", "STATUS", "REASON"],
                 [[_iso(v.shown_at), v.store_key, v.program_kind, _subject(v), str(v.step), v.status, _reason(v)]
                  for v in views]))
    return 0


def summary_command(args: argparse.Namespace) -> int:
    settings = load_without_credentials(args)
    engine = _engine(settings)
    try:
        summary = trigger_summary(engine, args.store, settings=settings)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"store": args.store, **_summary_json(summary)}, indent=2))
        return 0
    print(f"program triggers of {f'store {args.store}' if args.store else 'every store'}: {summary.total}")
    if summary.by_status:
        print(_table(["STATUS", "COUNT"], [[status, str(n)] for status, n in summary.by_status.items()]))
    print(f"pending and already due: {summary.pending_due}")
    if summary.skipped_by_reason:
        print(_table(["SKIPPED BECAUSE", "COUNT"], [[reason, str(n)] for reason, n in summary.skipped_by_reason.items()]))
    if summary.enrolment_budgets:
        print(_table(["ACCOUNT", "ENROLMENT CALLS IN THE LAST HOUR"],
                     [[b.account, f"{b.calls_last_hour} of {b.calls_per_hour}"] for b in summary.enrolment_budgets]))
    return 0


# -- formatting -----------------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _subject(view: TriggerView) -> str:
    version = f" v{view.subject_version}" if view.subject_version else ""
    return f"{view.subject_type} {view.subject_id}{version}"


def _reason(view: TriggerView) -> str:
    if view.reason:
        return view.reason
    if view.enrolment_id:
        return f"enrolment {view.enrolment_id}"
    return "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _json(view: TriggerView) -> dict[str, Any]:
    data = asdict(view)
    for key in ("due_at", "decided_at", "created_at"):
        data[key] = _iso(data[key]) or None
    return data


def _summary_json(summary: TriggerSummary) -> dict[str, Any]:
    return {"by_status": summary.by_status, "skipped_by_reason": summary.skipped_by_reason,
            "pending_due": summary.pending_due,
            "enrolment_budgets": [asdict(b) for b in summary.enrolment_budgets]}
