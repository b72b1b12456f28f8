"""The simulator's output: the timeline (one entry per input event, Dotdigital call and trigger decision, in
virtual time) and its summary, as text or as JSON with stable keys."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

#: entry kinds (entries of one instant are listed in the order they were recorded: the input first)
ENTRY_KINDS = ("event", "dotdigital", "trigger", "note")

#: Dotdigital endpoints the service calls, as templates (for "calls by endpoint")
_ENDPOINTS = [
    (re.compile(r"^/contacts/v3/import/[^/]+$", re.I), "/contacts/v3/import/{importId}"),
    (re.compile(r"^/contacts/v3/(import|delete)$", re.I), None),
    (re.compile(r"^/contacts/v3/[^/]+/[^/]+$", re.I), "/contacts/v3/{identifier}/{value}"),
    (re.compile(r"^/insightData/v3/import/[^/]+$", re.I), "/insightData/v3/import/{importId}"),
    (re.compile(r"^/insightData/v3/contacts/[^/]+/[^/]+/([^/]+)/[^/]+$", re.I),
     "/insightData/v3/contacts/{identifier}/{value}/{collection}/{recordId}"),
    (re.compile(r"^/insightData/v3/account/([^/]+)/[^/]+$", re.I), "/insightData/v3/account/{collection}/{recordId}"),
    (re.compile(r"^/insightData/v3/collections/[^/]+/schema$", re.I), "/insightData/v3/collections/{name}/schema"),
    (re.compile(r"^/insightData/v3/collections/[^/]+$", re.I), "/insightData/v3/collections/{name}"),
    (re.compile(r"^/v2/programs/enrolments/[^/]+/report-faults$", re.I), "/v2/programs/enrolments/{id}/report-faults"),
    (re.compile(r"^/v2/programs/enrolments/[^/]+$", re.I), "/v2/programs/enrolments/{id}"),
    (re.compile(r"^/v2/programs/\d+$", re.I), "/v2/programs/{id}"),
    (re.compile(r"^/v2/address-books/\d+/contacts/\d+$", re.I), "/v2/address-books/{id}/contacts/{contactId}"),
    (re.compile(r"^/v2/address-books/\d+/contacts$", re.I), "/v2/address-books/{id}/contacts"),
    (re.compile(r"^/v2/contacts/(suppressed|unsubscribed)-since/[^/]+$", re.I), "/v2/contacts/{feed}-since/{date}"),
]


def endpoint_of(method: str, path: str) -> str:
    """``PUT /contacts/v3/email/jane%40example.com`` -> ``PUT /contacts/v3/{identifier}/{value}``."""
    for pattern, template in _ENDPOINTS:
        if pattern.match(path):
            return f"{method} {template or path}"
    return f"{method} {path}"


def iso(moment: datetime) -> str:
    """``2026-12-02T10:00:00Z`` (milliseconds only when there are some)."""
    moment = moment.astimezone(timezone.utc)
    text = moment.isoformat(timespec="milliseconds" if moment.microsecond else "seconds")
    return text.replace("+00:00", "Z")


@dataclass
class Entry:
    """One line of the timeline. ``data`` holds the entry's facts with stable keys (the JSON output)."""

    at: datetime
    kind: str  # one of ENTRY_KINDS
    text: str
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = 0  # order of recording, for a stable sort within an instant

    def line(self) -> str:
        return f"{iso(self.at)}  {self.kind:<10} {self.text}"

    def as_json(self) -> dict[str, Any]:
        return {"at": iso(self.at), "kind": self.kind, "text": self.text, **self.data}


class Timeline:
    """Entries as they are recorded (any order); ``entries`` sorts them by virtual time."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []

    def add(self, at: datetime, kind: str, text: str, **data: Any) -> Entry:
        entry = Entry(at, kind, text, data, seq=len(self._entries))
        self._entries.append(entry)
        return entry

    @property
    def entries(self) -> list[Entry]:
        return sorted(self._entries, key=lambda e: (e.at, e.seq))

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


# -- what the summary counts ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnrolmentCallFact:
    """An enrolment call the sandbox of ``account`` answered (accepted or refused)."""

    account: str
    at: datetime
    status: int
    program_id: int | None
    contacts: tuple[int, ...]
    error: str | None = None


def _hour(moment: datetime) -> str:
    return iso(moment.replace(minute=0, second=0, microsecond=0))


def max_in_rolling_hour(times: list[datetime]) -> int:
    """The most calls in any window of one hour (what Dotdigital's allowance counts)."""
    ordered, best, start = sorted(times), 0, 0
    for end, moment in enumerate(ordered):
        while ordered[start] <= moment - timedelta(hours=1):
            start += 1
        best = max(best, end - start + 1)
    return best


@dataclass(frozen=True)
class ProgramEntryFact:
    """A contact that entered a program in the sandbox of ``account`` (by an enrolment or a list join)."""

    account: str
    program_id: int
    label: str  # "<store> <kind>"
    contact_id: int
    via: str


def summarise(timeline: Timeline, enrolment_calls: list[EnrolmentCallFact], entries: list[ProgramEntryFact], *,
              calls_per_hour: int, violations: list[dict[str, Any]] | None, started: datetime,
              ended: datetime) -> dict[str, Any]:
    """The summary: trigger outcomes, the enrolment budget used, who entered which program (the sandbox's
    view), Dotdigital calls by endpoint, violations."""
    final: dict[int, dict[str, Any]] = {}
    for entry in timeline.of_kind("trigger"):
        final[entry.data["trigger_id"]] = entry.data  # the last state of each trigger
    by_status: Counter[str] = Counter(t["status"] for t in final.values())
    skipped: Counter[str] = Counter(t.get("reason") or "?" for t in final.values() if t["status"] == "skipped")
    cancelled: Counter[str] = Counter(t.get("reason") or "?" for t in final.values() if t["status"] == "cancelled")
    contacts_sent: Counter[tuple[str, int]] = Counter(
        (t["program_kind"], t["contact_id"]) for t in final.values() if t["status"] == "sent")

    accounts: dict[str, dict[str, Any]] = {}
    by_account: dict[str, list[EnrolmentCallFact]] = defaultdict(list)
    for call in enrolment_calls:
        by_account[call.account].append(call)
    for account, calls in sorted(by_account.items()):
        accepted = [c for c in calls if c.status == 201]
        per_hour = Counter(_hour(c.at) for c in accepted)
        accounts[account] = {
            "calls": len(accepted),
            "refused": dict(sorted(Counter(c.error or str(c.status) for c in calls if c.status != 201).items())),
            "per_hour": dict(sorted(per_hour.items())),
            "max_in_rolling_hour": max_in_rolling_hour([c.at for c in accepted]),
            "allowed_per_hour": calls_per_hour,
            "batch_sizes": [len(c.contacts) for c in accepted],
            "contacts_enrolled": sum(len(c.contacts) for c in accepted),
        }
    programs: dict[str, dict[str, Any]] = {}
    for entry in entries:
        facts = programs.setdefault(f"{entry.account}/{entry.program_id}", {
            "account": entry.account, "program_id": entry.program_id, "program": entry.label, "entries": 0,
            "contacts": set(), "by_list_join": 0})
        facts["entries"] += 1
        facts["contacts"].add(entry.contact_id)
        facts["by_list_join"] += entry.via == "list_join"
    for facts in programs.values():
        facts["contacts"] = len(facts["contacts"])
    endpoints = Counter(e.data["endpoint"] for e in timeline.of_kind("dotdigital"))
    refused = [{"line": e.data.get("line"), "code": e.data.get("code"), "reason": e.data.get("reason")}
               for e in timeline.of_kind("event") if e.data.get("outcome") == "error"]
    summary: dict[str, Any] = {
        "started": iso(started),
        "ended": iso(ended),
        "events": len(timeline.of_kind("event")),
        "refused_inputs": refused,
        "triggers": {
            "total": len(final),
            "sent": by_status.get("sent", 0),
            "skipped": dict(sorted(skipped.items())),
            "cancelled": dict(sorted(cancelled.items())),
            "pending": sum(n for s, n in by_status.items() if s not in ("sent", "skipped", "cancelled")),
            "contacts_sent_more_than_once": sorted(
                [kind, contact] for (kind, contact), n in contacts_sent.items() if n > 1),
        },
        "enrolment_calls": accounts,
        "program_entries": dict(sorted(programs.items())),
        "dotdigital_calls": dict(sorted(endpoints.items())),
    }
    if violations is not None:
        summary["openapi_violations"] = len(violations)
    return summary


def render_text(timeline: Timeline, summary: dict[str, Any], violations: list[dict[str, Any]] | None) -> str:
    lines = [entry.line() for entry in timeline.entries]
    lines.append("")
    lines.append(f"summary ({summary['started']} .. {summary['ended']}, {summary['events']} events)")
    if summary["refused_inputs"]:
        lines.append(f"  REFUSED INPUTS: {len(summary['refused_inputs'])}")
        for refused in summary["refused_inputs"]:
            lines.append(f"    line {refused['line']}: {refused['code']}: {refused['reason']}")
    triggers = summary["triggers"]
    lines.append(f"  triggers: {triggers['total']} ({triggers['sent']} sent, "
                 f"{sum(triggers['skipped'].values())} skipped, {sum(triggers['cancelled'].values())} cancelled, "
                 f"{triggers['pending']} still pending)")
    for title, counts in (("skipped", triggers["skipped"]), ("cancelled", triggers["cancelled"])):
        for reason, count in counts.items():
            lines.append(f"    {title} {reason}: {count}")
    if triggers["contacts_sent_more_than_once"]:
        lines.append(f"    SENT MORE THAN ONCE: {triggers['contacts_sent_more_than_once']}")
    if summary["enrolment_calls"]:
        lines.append("  enrolment calls:")
    for account, facts in summary["enrolment_calls"].items():
        sizes = Counter(facts["batch_sizes"])
        batches = ", ".join(f"{n}x{size}" for size, n in sorted(sizes.items(), reverse=True))
        lines.append(f"    account {account}: {facts['calls']} calls ({batches or 'none'}), "
                     f"{facts['contacts_enrolled']} contacts; at most {facts['max_in_rolling_hour']} "
                     f"in an hour of the {facts['allowed_per_hour']} allowed")
        for hour, count in facts["per_hour"].items():
            lines.append(f"      {hour}  {count}/{facts['allowed_per_hour']}")
        for code, count in facts["refused"].items():
            lines.append(f"      refused {code}: {count}")
    for key, facts in summary["program_entries"].items():
        once = "each once" if facts["entries"] == facts["contacts"] else "SOME MORE THAN ONCE"
        lines.append(f"  program {facts['program_id']} ({facts['program']}, account {facts['account']}): "
                     f"{facts['contacts']} contact(s) entered, {once}")
    lines.append("  Dotdigital calls:")
    for endpoint, count in summary["dotdigital_calls"].items():
        lines.append(f"    {count:>6}  {endpoint}")
    for note, count in summary.get("notes", {}).items():
        lines.append(f"  note ({count}x): {note}")
    if violations is not None:
        lines.append(f"  OpenAPI violations: {len(violations)}")
        for v in violations:
            lines.append(f"    {v['at']}  {v['method']} {v['path']}  {v['where']}: {v['message']}  "
                         f"({v['document']}: {v['operation']})")
    return "\n".join(lines) + "\n"


def render_json(timeline: Timeline, summary: dict[str, Any], violations: list[dict[str, Any]] | None) -> dict[str, Any]:
    document: dict[str, Any] = {"timeline": [e.as_json() for e in timeline.entries], "summary": summary}
    if violations is not None:
        document["openapi_violations"] = violations
    return document


def short_id(value: str | None) -> str:
    """A uuid shortened for a timeline line (``3f2a…``)."""
    if not value:
        return "?"
    return value[:8] + "…" if len(value) > 9 else value
