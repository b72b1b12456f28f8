"""``ctdd contact show``: the support tool for one contact, reading the database directly.

    ctdd contact show (--email E | --customer-id ID --store KEY | --mobile M | --contact-id N) [--store KEY]
                      [--messages N] [--triggers N] [--json] [--config F] [--database-url U]

Prints what ctdd-sync holds and decided for the contact (``ctdd.ingest.contact_view``): its identifiers and
identity conflicts, each Dotdigital field's last sent value with its source record and the message that carried
it, the channel statuses, the lists, the pending and recent outbox messages with their delivery attempts, and
the pending and decided program triggers. This is the operator's tool: it prints personal data to standard
output and logs none of it. Exit codes: 0 found, 1 no such contact, 2 bad arguments or configuration.
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
from ctdd.ingest.contact_view import (
    DEFAULT_MESSAGES, DEFAULT_TRIGGERS, MAX_ROWS, ContactCard, MessageOutcome, MessageView, contact_card,
)
from ctdd.cli.triggers_cmd import add_contact_arguments
from ctdd.programs.queries import InvalidQuery, find_contact

#: argument names of ctdd.programs.queries -> command-line flags
_FLAGS = {"email": "--email", "customer_id": "--customer-id", "store_key": "--store", "mobile": "--mobile",
          "contact_id": "--contact-id"}


def register(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``ctdd contact show`` to the subcommands ``sub``; ``common`` adds --config and the shared flags."""
    contact = sub.add_parser("contact", help="one contact: identifiers, fields sent, messages and triggers")
    contact_sub = contact.add_subparsers(dest="contact_command", required=True)
    show = contact_sub.add_parser(
        "show", help="a contact's identifiers and conflicts, last sent fields, channels, lists, messages and triggers")
    common(show)
    add_contact_arguments(show)
    show.add_argument("--messages", type=int, default=DEFAULT_MESSAGES,
                      help=f"settled outbox messages to show, newest first (default {DEFAULT_MESSAGES}, "
                           f"at most {MAX_ROWS}); unsettled ones are always shown")
    show.add_argument("--triggers", type=int, default=DEFAULT_TRIGGERS,
                      help=f"program triggers to show, pending first (default {DEFAULT_TRIGGERS}, at most {MAX_ROWS})")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(func=show_command, listen=None)


def _engine(settings):
    engine = create_db_engine(settings.database_url)
    if not sa.inspect(engine).has_table("contact"):
        engine.dispose()
        raise ConfigError("the database has no contact table yet: run `ctdd db upgrade` first")
    return engine


def show_command(args: argparse.Namespace) -> int:
    for name in ("messages", "triggers"):
        if not 1 <= getattr(args, name) <= MAX_ROWS:
            print(f"ctdd contact: --{name}: must be between 1 and {MAX_ROWS}", file=sys.stderr)
            return 2
    settings = load_without_credentials(args)
    engine = _engine(settings)
    flag, given = next((_FLAGS[n], getattr(args, n)) for n in ("email", "customer_id", "mobile", "contact_id")
                       if getattr(args, n) is not None)
    try:
        contact_id = find_contact(engine, email=args.email, customer_id=args.customer_id, mobile=args.mobile,
                                  contact_id=args.contact_id, store_key=args.store, settings=settings)
        card = None if contact_id is None else contact_card(
            engine, contact_id, settings=settings, message_limit=args.messages, trigger_limit=args.triggers)
    except InvalidQuery as exc:
        where = _FLAGS.get(exc.field or "", "")
        print(f"ctdd contact: {where + ': ' if where else ''}{exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if card is None:
        print(f"ctdd contact: no contact found for {flag} {given}" + (f" in store {args.store}" if args.store else ""),
              file=sys.stderr)
        return 1
    print(json.dumps(card_json(card), indent=2) if args.json else render(card))
    return 0


# -- formatting -----------------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def card_json(card: ContactCard) -> dict[str, Any]:
    """The card as JSON-ready data (times as ISO 8601 UTC)."""
    return _jsonable(asdict(card))


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])


def _short(text: Any, width: int = 60) -> str:
    text = " ".join(("-" if text is None or text == "" else str(text)).split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _value(value: Any) -> str:
    return _short(json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value, 50)


def _carried(outcome: MessageOutcome | None) -> str:
    if outcome is None:
        return "-"
    if outcome.status is None:
        return f"outbox:{outcome.id} (gone)"
    code = f" {outcome.response_code}" if outcome.response_code else ""
    return f"outbox:{outcome.id} {outcome.status}{code}"


def _record(m: MessageView) -> str:
    if not m.record_type and not m.record_id:
        return "-"
    return f"{m.record_type or '?'} {m.record_id or '?'}" + (f" v{m.record_version}" if m.record_version else "")


def _messages(title: str, messages: list[MessageView]) -> list[str]:
    lines = ["", title]
    if not messages:
        return lines + ["  none"]
    lines.append(_table(
        ["REF", "SEQ", "KIND", "STATUS", "STORE", "RECORD", "ATTEMPTS", "CODE", "CREATED (UTC)", "LAST ERROR"],
        [[f"outbox:{m.id}", str(m.sequence), m.kind, m.status + (f" into outbox:{m.merged_into}" if m.merged_into
                                                                   else ""),
          m.store_key or "-", _record(m), str(m.attempts), str(m.response_code or "-"), _iso(m.created_at),
          _short(m.error)] for m in messages]))
    for m in messages:
        if m.attempt_log:
            lines.append(f"  outbox:{m.id} attempts: " + "; ".join(
                f"#{a.attempt} {a.outcome}" + (f" {a.response_code}" if a.response_code else "")
                + (f" at {_iso(a.finished_at)}" if a.finished_at else "") + (f" ({_short(a.error, 80)})" if a.error
                                                                            else "")
                for a in m.attempt_log))
    return lines


def render(card: ContactCard) -> str:
    """The card as text for a terminal."""
    lines = [f"contact {card.contact_id} (account {card.account}, Dotdigital contact "
             f"{card.dotdigital_contact_id or 'not known yet'})",
             f"email   {card.email or '-'}", f"mobile  {card.mobile_number or '-'}",
             f"created {_iso(card.created_at)}  updated {_iso(card.updated_at)}", "", "identifiers"]
    lines.append(_table(["KIND", "VALUE", "SINCE (UTC)"],
                        [[i.kind, i.value, _iso(i.created_at)] for i in card.identifiers]) if card.identifiers
                 else "  none")
    lines += ["", "identity conflicts"]
    lines.append(_table(
        ["KIND", "THIS CONTACT", "OTHER CONTACT", "RULE", "AT (UTC)"],
        [[c.kind, "asked for it, not given" if c.role == "requested" else "kept it", str(c.other_contact_id), c.rule,
          _iso(c.created_at)] for c in card.conflicts]) if card.conflicts else "  none")
    lines += ["", "fields (last value sent, newest source wins)"]
    lines.append(_table(
        ["FIELD", "VALUE", "SOURCE", "VERSION", "SOURCE TIME (UTC)", "SENT (UTC)", "MESSAGE"],
        [[f.field, _value(f.value), f.source_ref or "-", str(f.source_version or "-"), _iso(f.source_ts) or "-",
          _iso(f.updated_at), _carried(f.message)] for f in card.fields]) if card.fields else "  none")
    lines += ["", "channels"]
    lines.append(_table(
        ["CHANNEL", "DOTDIGITAL STATUS", "SINCE (UTC)", "SHOP CONSENT", "DECIDED (UTC)"],
        [[c.channel, c.dotdigital_status or "-", _iso(c.dotdigital_status_at) or "-", c.shop_consent or "-",
          _iso(c.shop_consent_at) or "-"] for c in card.channels]))
    lines += ["", "lists"]
    lines.append(_table(
        ["LIST", "NAME", "MEMBER", "SINCE (UTC)", "MESSAGE"],
        [[str(li.list_id), ", ".join(li.names) or "-", "yes" if li.member else "no (removed)", _iso(li.since),
          _carried(li.message)] for li in card.lists]) if card.lists else "  none")
    lines += _messages("pending messages (not yet settled, in delivery order)", card.pending_messages)
    lines += _messages("recent messages (newest first" + (", more exist: use --messages)" if card.more_messages
                                                          else ")"), card.recent_messages)
    lines += ["", "program triggers (pending first, then decided" + (", more exist: use --triggers)"
                                                                     if card.more_triggers else ")")]
    lines.append(_table(
        ["ID", "TIME (UTC)", "STORE", "KIND", "SUBJECT", "STEP", "STATUS", "REASON"],
        [[str(t.id), _iso(t.shown_at), t.store_key, t.program_kind,
          f"{t.subject_type} {t.subject_id}" + (f" v{t.subject_version}" if t.subject_version else ""), str(t.step),
          t.status, t.reason or (f"enrolment {t.enrolment_id}" if t.enrolment_id else "-")]
         for t in card.triggers]) if card.triggers else "  none")
    return "\n".join(lines)
