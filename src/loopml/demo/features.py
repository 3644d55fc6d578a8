"""The demo's feature definitions and the daily feature job that computes their values with DuckDB."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import duckdb
import pandas as pd

from loopml.features import Entity, FeatureService, FeatureView, Field, ParquetSource

USER = Entity("user", join_keys=["user_id"], description="A card holder.")
MERCHANT = Entity("merchant", join_keys=["merchant_id"], description="A card acceptor.")

USER_STATS = FeatureView(
    name="user_stats",
    entities=[USER],
    source=ParquetSource("data/user_stats/*.parquet", "event_timestamp", "created_timestamp"),
    schema=[Field("spend_7d"), Field("txn_count_1d", "int64"), Field("avg_amount_30d")],
    ttl=timedelta(days=2),
    description="A user's spending over the last 7 days, transactions over the last day, mean amount over 30 days.",
)
MERCHANT_STATS = FeatureView(
    name="merchant_stats",
    entities=[MERCHANT],
    source=ParquetSource("data/merchant_stats/*.parquet", "event_timestamp", "created_timestamp"),
    schema=[Field("fraud_rate_30d")],
    ttl=timedelta(days=2),
    description="Share of a merchant's labelled transactions of the last 30 days that were fraud (smoothed).",
)
FRAUD_SERVICE = FeatureService(
    "fraud_detector",
    [
        "user_stats:spend_7d",
        "user_stats:txn_count_1d",
        "user_stats:avg_amount_30d",
        "merchant_stats:fraud_rate_30d",
    ],
    description="What the fraud model reads, in training and in serving.",
)
DEFINITIONS = [USER, MERCHANT, USER_STATS, MERCHANT_STATS, FRAUD_SERVICE]
REQUEST_FEATURES = ("amount", "merchant_category")

_USER_SQL = """
SELECT u.user_id, d.day_end AS event_timestamp, d.day_end AS created_timestamp,
       coalesce(sum(t.amount) FILTER (WHERE t.event_timestamp >= d.day_end - INTERVAL 7 DAY), 0.0) AS spend_7d,
       count(t.amount) FILTER (WHERE t.event_timestamp >= d.day_end - INTERVAL 1 DAY)::BIGINT AS txn_count_1d,
       avg(t.amount) AS avg_amount_30d
FROM days AS d CROSS JOIN users AS u
LEFT JOIN transactions AS t
  ON t.user_id = u.user_id AND t.event_timestamp < d.day_end AND t.event_timestamp >= d.day_end - INTERVAL 30 DAY
GROUP BY ALL ORDER BY event_timestamp, user_id
"""

# Only chargebacks that have arrived by the end of the day count: the job cannot see the future.
_MERCHANT_SQL = """
SELECT m.merchant_id, d.day_end AS event_timestamp, d.day_end AS created_timestamp,
       (count(t.amount) FILTER (WHERE t.is_fraud = 1) + 0.4) / (count(t.amount) + 20.0) AS fraud_rate_30d
FROM days AS d CROSS JOIN merchants AS m
LEFT JOIN transactions AS t
  ON t.merchant_id = m.merchant_id AND t.label_available_at < d.day_end
     AND t.event_timestamp >= d.day_end - INTERVAL 30 DAY
GROUP BY ALL ORDER BY event_timestamp, merchant_id
"""


def feature_rows(
    transactions: pd.DataFrame, users: pd.DataFrame, merchants: pd.DataFrame, day_ends: Sequence[pd.Timestamp]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """user_stats and merchant_stats rows as of each day end, from what was known at that moment."""
    with duckdb.connect() as conn:
        conn.execute("SET TimeZone='UTC'")
        conn.register("transactions", transactions)
        conn.register("users", users[["user_id"]])
        conn.register("merchants", merchants[["merchant_id"]])
        conn.register("days", pd.DataFrame({"day_end": pd.to_datetime(list(day_ends), utc=True)}))
        return conn.execute(_USER_SQL).df(), conn.execute(_MERCHANT_SQL).df()
