"""``ctdd simulate STREAM [--config F] [--openapi DIR] [--json] [--until ISO|+DURATION]``: replay a recorded
stream on a virtual clock and print the timeline (``ctdd.simulation``, docs/simulate.md).

Exit status: 0; 1 when the service refused an input of the stream or ``--openapi`` found violations; 2 for a bad
stream, configuration or argument."""

from __future__ import annotations

import json
import logging
import sys

from ctdd.config import ConfigError


def register(sub, common) -> None:
    p = sub.add_parser("simulate", help="replay a recorded stream of events on a virtual clock; print the timeline")
    p.add_argument("stream", help="JSON lines: one timed event each (docs/simulate.md)")
    p.add_argument("--config", default=None,
                   help="TOML configuration of the stores and programs (default: one store with an abandoned-cart "
                        "program); its accounts, commercetools clients and database are replaced by sandboxes")
    p.add_argument("--openapi", default=None, metavar="DIR",
                   help="check every body sent against the OpenAPI documents in DIR (*.json, *.yaml)")
    p.add_argument("--json", action="store_true", help="print the timeline and summary as JSON")
    p.add_argument("--until", default=None, metavar="ISO|+DURATION",
                   help="run to this time, or this long after the last event (default: until nothing is left to do)")
    p.add_argument("--log-level", default="WARNING", help="the service's log level (default WARNING)")
    p.set_defaults(func=run, listen=None)


def run(args) -> int:
    from ctdd.simulation import SimulationError, StreamError, read_stream, simulate

    logging.getLogger().setLevel(args.log_level.upper())
    try:
        events = read_stream(args.stream)
    except OSError as exc:
        raise ConfigError(f"cannot read stream {args.stream}: {exc.strerror or exc}") from None
    except StreamError as exc:
        print(f"ctdd simulate: {args.stream}: {exc}", file=sys.stderr)
        return 2
    try:
        result = simulate(events, config=args.config, openapi=args.openapi, until=args.until)
    except SimulationError as exc:  # an empty stream, a bad --until, no document in --openapi
        print(f"ctdd simulate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(result.as_json(), sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result.as_text())
    return 1 if result.violations or result.summary["refused_inputs"] else 0
