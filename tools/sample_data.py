"""Write sample_data/users.csv and users.parquet: a realistic small export with known bad rows.

It lives outside sample_data/ so that importing that directory meets only data files (the
reader would name any other file it skips).

Deterministic (seeded), so the files in the repo are exactly what this script writes. The
deliberately bad rows are listed in BAD_CSV_ROWS / BAD_PARQUET_ROWS (1-based data rows), which
the tests use to check that validation rejects exactly those.

    python tools/sample_data.py        (make sample)
"""

from __future__ import annotations

import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent.parent / "sample_data"
USERS = 3000
FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Linus",
    "Margaret",
    "Ken",
    "Barbara",
    "Dennis",
    "Radia",
    "Guido",
    "Frances",
    "Edsger",
    "Hedy",
    "Niklaus",
    "Katherine",
    "Tim",
    "Anita",
    "Donald",
    "Mary",
    "Sophie",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Torvalds",
    "Hamilton",
    "Thompson",
    "Liskov",
    "Ritchie",
    "Perlman",
    "van Rossum",
    "Allen",
    "Dijkstra",
    "Lamarr",
    "Wirth",
    "Johnson",
    "Berners-Lee",
    "Borg",
    "Knuth",
    "Kenyon",
    "Wilson",
]
PLANS = ["free", "starter", "pro", "enterprise"]
TAGS = ["beta", "newsletter", "vip", "trial", "mobile", "webinar", "churn-risk"]
COUNTRIES = ["IN", "US", "GB", "DE", "FR", "BR", "SG", "AU"]
FIELDS = ["legacy_score", "old_plan", "fax"]

# row number (1-based, header excluded) -> why the row is bad
BAD_CSV_ROWS = {
    17: "user_id empty",
    240: "lifetime_value 'abc' is not a number",
    999: "email over 255 characters",
    1500: "signup_at '2024-13-45' is not a datetime",
    2222: "marketing_opt_in 'maybe' is not a boolean",
}
BAD_PARQUET_ROWS = {17: "user_id null", 999: "email over 255 characters"}


def _rows() -> list[dict[str, object]]:
    rng = random.Random(20241129)
    start = datetime(2021, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(1, USERS + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        signup = start + timedelta(seconds=rng.randrange(0, 3 * 365 * 86400))
        rows.append(
            {
                "user_id": f"u-{100000 + n}",
                "first_name": first,
                "last_name": last,
                "email": f"{first}.{last}.{n}@example.com".lower().replace(" ", ""),
                "plan": rng.choice(PLANS),
                "signup_at": signup,
                "birthday": date(1960, 1, 1) + timedelta(days=rng.randrange(0, 40 * 365)),
                "lifetime_value": Decimal(rng.randrange(0, 500000)) / 100,
                "logins": rng.randrange(0, 40),
                "tags": ";".join(rng.sample(TAGS, rng.randrange(0, 4))) or None,
                "removed_tags": "trial" if rng.random() < 0.2 else None,
                "marketing_opt_in": rng.choice(["yes", "no", "Y", "N", "true", "false"]),
                "country": rng.choice(COUNTRIES),
                "phone": f"+91{rng.randrange(7000000000, 9999999999)}"
                if rng.random() < 0.7
                else None,
                "churned_fields": ",".join(rng.sample(FIELDS, 2)) if rng.random() < 0.05 else None,
            }
        )
    return rows


def _csv_frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    def text(row: dict[str, object], key: str) -> str | None:
        value = row[key]
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.strftime("%Y-%m-%dT%H:%M:%SZ")
        return str(value)

    data = [{k: text(r, k) for k in r} for r in rows]
    data[16]["user_id"] = ""
    data[239]["lifetime_value"] = "abc"
    data[998]["email"] = "x" * 250 + "@example.com"
    data[1499]["signup_at"] = "2024-13-45"
    data[2221]["marketing_opt_in"] = "maybe"
    return pl.DataFrame(data, schema={k: pl.String for k in rows[0]})


def _parquet_frame(rows: list[dict[str, object]]) -> pl.DataFrame:
    frame = pl.DataFrame(rows).with_columns(
        pl.col("lifetime_value").cast(pl.Decimal(12, 2)),
        pl.col("signup_at").dt.convert_time_zone("UTC"),
        pl.col("marketing_opt_in").is_in(["yes", "Y", "true"]),
    )
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 16)
        .then(None)
        .otherwise(pl.col("user_id"))
        .alias("user_id"),
        pl.when(pl.int_range(pl.len()) == 998)
        .then(pl.lit("x" * 250 + "@example.com"))
        .otherwise(pl.col("email"))
        .alias("email"),
    )
    return frame


def main() -> None:
    """Write both sample files."""
    rows = _rows()
    _csv_frame(rows).write_csv(HERE / "users.csv")
    _parquet_frame(rows).write_parquet(HERE / "users.parquet")
    print(f"wrote {len(rows)} users to {HERE}/users.csv and users.parquet")


if __name__ == "__main__":
    main()
