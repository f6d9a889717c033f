"""``gateway usage``: the usage roll-ups from the admin API, as a table (or ``--json``, ``--csv``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gateway.admin.cli import AdminClient, Column, _field, _table, _with_client

__all__ = ["add_usage_command"]

_GROUPS = ("key", "tenant", "model", "provider")


def _money(row: dict[str, Any]) -> str:
    return f"{float(row.get('cost_usd') or 0.0):.6f}"


def usage_columns(group: list[str]) -> list[Column]:
    def ms(name: str) -> Any:
        return lambda row: "-" if row.get(name) is None else f"{row[name]:.1f}"

    columns: list[Column] = [("START", _field("start"))]
    columns += [(g.upper(), _field(g)) for g in group]
    columns += [
        ("REQUESTS", _field("requests")), ("ERRORS", _field("errors")), ("IN TOKENS", _field("input_tokens")),
        ("OUT TOKENS", _field("output_tokens")), ("CACHED", _field("cached_tokens")), ("COST USD", _money),
        ("MEAN MS", ms("latency_mean_ms")), ("P50 MS", ms("latency_p50_ms")),
        ("P90 MS", ms("latency_p90_ms")), ("P99 MS", ms("latency_p99_ms")),
    ]
    return columns


def usage_show(c: AdminClient, args: argparse.Namespace) -> None:
    group = [g for g in (args.group_by or "").split(",") if g]
    params = {"from": args.since, "to": args.until, "granularity": args.granularity,
              "group_by": ",".join(group) or None, "key": args.key, "tenant": args.tenant,
              "model": args.model, "provider": args.provider, "total": "true" if args.total else None}
    if args.csv:
        print(c.text("GET", "/admin/v1/usage", params={**params, "format": "csv"}), end="")
        return
    data = c.call("GET", "/admin/v1/usage", params=params)
    if args.json:
        print(json.dumps(data, indent=2))
    elif not data["rows"]:
        print(f"no usage from {data['start']} to {data['end']}")
    else:
        print(_table(data["rows"], usage_columns(group)))


def add_usage_command(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("usage", parents=[common],
                       help="usage roll-ups: requests, errors, tokens, cost and latency over time")
    p.add_argument("--from", dest="since", metavar="TIME",
                   help="first bucket: unix seconds, YYYY-MM-DD or ISO 8601 UTC (default: by granularity)")
    p.add_argument("--to", dest="until", metavar="TIME", help="last bucket (default: now)")
    p.add_argument("--granularity", choices=["minute", "hour", "day"], default="hour")
    p.add_argument("--group-by", metavar="DIMS", help="comma-separated: " + ", ".join(_GROUPS))
    p.add_argument("--key", help="only this key id")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--model", help="only this model")
    p.add_argument("--provider", help="only this provider")
    p.add_argument("--total", action="store_true", help="one row per group for the whole range")
    p.add_argument("--csv", action="store_true", help="print the API's CSV export")
    p.set_defaults(func=_with_client(usage_show))
