"""Usage by day, model or key, read from the rollups the settle keeps; the ledger as CSV."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, cast

from app.accounts.keys import parse_time
from app.errors import InvalidRequest
from app.store.base import Transaction, UsageGroup, UsageRow

GROUPS = ("day", "model", "key")
DEFAULT_DAYS = 30
MAX_DAYS = 3660
_LABEL = {"day": "day", "model": "model", "key": "key_id"}


def day_range(start: str | None, end: str | None, *, now: datetime) -> tuple[date, date]:
    """The UTC days overlapping [start, end): (first day, day after the last). Default: 30 days."""
    end_at = parse_time(end, "end") if end is not None else now
    start_at = parse_time(start, "start") if start is not None else end_at - timedelta(days=DEFAULT_DAYS)
    if start_at >= end_at:
        raise InvalidRequest("'start' must be before 'end'.", param="start")
    first = start_at.astimezone(UTC).date()
    end_utc = end_at.astimezone(UTC)
    after = end_utc.date() if end_utc.timetz() == time(0, tzinfo=UTC) else end_utc.date() + timedelta(days=1)
    if (after - first).days > MAX_DAYS:
        raise InvalidRequest(f"The range may span at most {MAX_DAYS} days.", param="start")
    return first, after


def group_by(raw: str) -> UsageGroup:
    if raw not in GROUPS:
        raise InvalidRequest("'group_by' must be one of 'day', 'model' or 'key'.", param="group_by")
    return cast(UsageGroup, raw)


def usage_json(rows: list[UsageRow], group: UsageGroup, currency: str) -> dict[str, Any]:
    label = _LABEL[group]
    return {
        "currency": currency,
        "group_by": group,
        "rows": [
            {
                # '' in the rollups is a call made with a session (JWT), not a key.
                label: (r.group or None) if group == "key" else r.group,
                "requests": r.requests,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "cost": r.cost,
            }
            for r in rows
        ],
    }


CSV_COLUMNS = [
    "id", "timestamp", "kind", "amount", "description", "model", "request_id",
    "prompt_tokens", "completion_tokens",
]  # fmt: skip


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell starting with = + - @ as a formula; descriptions are user-influenced.
    if text[:1] in ("=", "+", "@", "\t", "\r") or (text[:1] == "-" and not _is_number(text)):
        return "'" + text
    return text


def _is_number(text: str) -> bool:
    try:
        Decimal(text)
    except InvalidOperation:
        return False
    return True


def transactions_csv(rows: list[Transaction]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for t in rows:
        writer.writerow(
            [
                _cell(v)
                for v in (
                    t.id, t.timestamp.isoformat(), t.kind, format(t.amount.normalize(), "f"), t.description,
                    t.model, t.request_id, t.prompt_tokens, t.completion_tokens,
                )
            ]
        )  # fmt: skip
    return out.getvalue()
