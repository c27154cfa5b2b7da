"""Statistics of one CSV column: inferred type, nulls, range, mean, deviation and frequent values."""

from __future__ import annotations

import math
import re
from collections import Counter
from datetime import date, datetime
from typing import Any

TYPE_ORDER = ("boolean", "integer", "float", "date", "datetime")
BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no"})

# Integers and decimals with a leading zero ("00501", "007.5") are codes, not numbers.
INTEGER_RE = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
FLOAT_RE = re.compile(r"[+-]?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
DATETIME_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?"
)


class ColumnStats:
    """Running statistics of one column, updated one cell at a time."""

    def __init__(self, name: str, max_distinct: int) -> None:
        self.name = name
        self.max_distinct = max_distinct
        self.nulls = 0
        self.values = 0
        self.counts: Counter[str] = Counter()
        self.distinct_exact = True
        self.candidates = set(TYPE_ORDER)
        self.number_count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.number_min: float | None = None
        self.number_max: float | None = None
        self.integer_min: int | None = None
        self.integer_max: int | None = None
        self.temporal_min: tuple[Any, str] | None = None
        self.temporal_max: tuple[Any, str] | None = None

    def add(self, cell: str) -> None:
        value = cell.strip()
        if not value:
            self.nulls += 1
            return

        self.values += 1
        if value in self.counts or len(self.counts) < self.max_distinct:
            self.counts[value] += 1
        else:
            self.distinct_exact = False
        if self.candidates:
            self._narrow(value)

    def _narrow(self, value: str) -> None:
        candidates = self.candidates
        if "boolean" in candidates and value.lower() not in BOOLEAN_WORDS:
            candidates.discard("boolean")
        if "integer" in candidates:
            if INTEGER_RE.fullmatch(value):
                number = int(value)
                self.integer_min = number if self.integer_min is None else min(self.integer_min, number)
                self.integer_max = number if self.integer_max is None else max(self.integer_max, number)
            else:
                candidates.discard("integer")
        if "float" in candidates:
            number = float(value) if FLOAT_RE.fullmatch(value) else math.nan
            if math.isfinite(number):
                self._add_number(number)
            else:
                # Past the float range ("1e999", a 400-digit id) a value is text, not a number.
                candidates.discard("float")
                candidates.discard("integer")
        if "date" in candidates:
            self._add_temporal("date", value, DATE_RE, date.fromisoformat)
        if "datetime" in candidates:
            self._add_temporal("datetime", value, DATETIME_RE, datetime.fromisoformat)

    def _add_number(self, number: float) -> None:
        # Welford's online algorithm keeps the variance stable over millions of rows.
        self.number_count += 1
        delta = number - self.mean
        self.mean += delta / self.number_count
        self.m2 += delta * (number - self.mean)
        self.number_min = number if self.number_min is None else min(self.number_min, number)
        self.number_max = number if self.number_max is None else max(self.number_max, number)

    def _add_temporal(self, kind: str, value: str, pattern: re.Pattern[str], parse: Any) -> None:
        if not pattern.fullmatch(value):
            self.candidates.discard(kind)
            return
        try:
            parsed = parse(value)
            if self.temporal_min is None or parsed < self.temporal_min[0]:
                self.temporal_min = (parsed, value)
            if self.temporal_max is None or parsed > self.temporal_max[0]:
                self.temporal_max = (parsed, value)
        except (ValueError, TypeError):
            # An impossible date, or naive and aware datetimes mixed in one column.
            self.candidates.discard(kind)

    def column_type(self) -> str:
        if self.values == 0:
            return "string"
        return next((name for name in TYPE_ORDER if name in self.candidates), "string")

    def report(self, top: int) -> dict[str, Any]:
        column_type = self.column_type()
        minimum: Any = None
        maximum: Any = None
        mean: float | None = None
        stddev: float | None = None
        if column_type == "integer":
            minimum, maximum = self.integer_min, self.integer_max
        elif column_type == "float":
            minimum, maximum = self.number_min, self.number_max
        elif column_type in ("date", "datetime") and self.temporal_min and self.temporal_max:
            minimum, maximum = self.temporal_min[1], self.temporal_max[1]
        if column_type in ("integer", "float"):
            mean = self.mean
            # Sample standard deviation (n - 1), as pandas and R report it.
            stddev = math.sqrt(self.m2 / (self.number_count - 1)) if self.number_count > 1 else None

        return {
            "name": self.name,
            "type": column_type,
            "nulls": self.nulls,
            "distinct": len(self.counts),
            "distinct_exact": self.distinct_exact,
            "min": minimum,
            "max": maximum,
            "mean": mean,
            "stddev": stddev,
            "top": [{"value": value, "count": count} for value, count in self.counts.most_common(top)],
        }
