"""The admin API's usage analytics: the roll-ups of ``gateway.observe.usage`` by time range, granularity,
grouping and filters, as JSON or CSV (docs/observability.md#usage-analytics).

A tenant admin's query is always narrowed to its own tenant (``?tenant=`` naming another answers 403
``tenant_forbidden``, as everywhere in the admin API).
"""

from __future__ import annotations

import calendar
import datetime
import time
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.admin.errors import AdminError
from gateway.observe.usage import CSV_COLUMNS, GRANULARITIES, GROUPS, UsageRow, query, to_csv

if TYPE_CHECKING:
    from gateway.admin.app import Call, Result
    from gateway.admin.auth import Principal
    from gateway.store.base import Store

__all__ = ["MAX_BUCKETS", "UsageAdmin", "UsageReport", "UsageText"]

#: buckets one query may span (e.g. a week of minutes)
MAX_BUCKETS = 10_080
#: buckets a query spans when it names no ``from``
_DEFAULT_BUCKETS = {"minute": 60, "hour": 24, "day": 30}


class UsageReport(msgspec.Struct, frozen=True, kw_only=True):
    granularity: str
    #: the range asked for, as UTC ISO 8601 times (bucket starts from ``start`` to ``end`` included)
    start: str
    end: str
    group_by: list[str]
    rows: list[UsageRow]


class UsageText(msgspec.Struct, frozen=True):
    """A non-JSON answer: the body and its content type."""

    body: bytes
    content_type: str


def _time(raw: str, name: str) -> int:
    """Unix seconds of ``raw``: an integer, ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]Z`` (UTC)."""
    try:
        if raw.isdigit():
            return int(raw)
        if len(raw) == 10:
            return calendar.timegm(datetime.date.fromisoformat(raw).timetuple())
        when = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return int(when.timestamp())
    except (ValueError, OverflowError):
        message = f"{name} must be unix seconds, YYYY-MM-DD or an ISO 8601 time (UTC)"
        raise AdminError(400, "invalid_argument", message, param=name) from None


def _iso(ts: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


class UsageAdmin:
    """``h_usage_query``, mixed into ``AdminApp``."""

    _clock: Any

    def _require_store(self) -> Store:
        raise NotImplementedError  # AdminApp's

    @staticmethod
    def _scope(principal: Principal, requested: str | None, param: str = "tenant") -> str | None:
        raise NotImplementedError  # AdminApp's

    async def h_usage_query(self, call: Call) -> Result:
        q = call.query
        gran = q.get("granularity", "hour")
        if gran not in GRANULARITIES:
            raise AdminError(400, "invalid_argument", "granularity is one of minute, hour, day",
                             param="granularity")
        step = GRANULARITIES[gran]
        group = [g for g in q.get("group_by", "").split(",") if g]
        for g in group:
            if g not in GROUPS or group.count(g) > 1:
                message = f"group_by is a comma-separated list of {', '.join(GROUPS)}"
                raise AdminError(400, "invalid_argument", message, param="group_by")
        fmt = q.get("format", "json")
        if fmt not in ("json", "csv"):
            raise AdminError(400, "invalid_argument", "format is json or csv", param="format")
        total = q.get("total", "false")
        if total not in ("true", "false"):
            raise AdminError(400, "invalid_argument", "total is true or false", param="total")
        end = _time(q["to"], "to") if "to" in q else int(self._clock())
        end -= end % step
        start = _time(q["from"], "from") if "from" in q else end - (_DEFAULT_BUCKETS[gran] - 1) * step
        start -= start % step
        if start > end:
            raise AdminError(400, "invalid_argument", "from must not be after to", param="from")
        if (end - start) // step + 1 > MAX_BUCKETS:
            message = f"a query spans at most {MAX_BUCKETS} buckets: a coarser granularity or a shorter range"
            raise AdminError(400, "invalid_argument", message, param="from")
        filters = {g: q[g] for g in GROUPS if g in q}
        tenant = self._scope(call.principal, filters.get("tenant"))
        if tenant is not None:
            filters["tenant"] = tenant
        cells = await self._require_store().usage_cells(gran, start, end)
        rows = query(cells, gran, group, filters, start, end, total=total == "true")
        if fmt == "csv":
            return 200, UsageText(to_csv(rows), "text/csv; charset=utf-8")
        return 200, UsageReport(granularity=gran, start=_iso(start), end=_iso(end), group_by=group, rows=rows)


#: the CSV answer's columns, for the OpenAPI document
CSV_DESCRIPTION = ("format=csv: text/csv with a header row of these columns, in order: "
                   + ", ".join(CSV_COLUMNS) + ". A column the query does not group by is empty.")
