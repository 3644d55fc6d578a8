"""The demo's feature definitions: declared windowed aggregations of the transaction and label streams, one
on-demand transformation, and the feature service the fraud model reads in training and in serving."""

from __future__ import annotations

from loopml.features import (
    Aggregation,
    Entity,
    FeatureService,
    FeatureView,
    Field,
    ParquetSource,
    on_demand_feature_view,
)

USER = Entity("user", join_keys=["user_id"], description="A card holder.")
MERCHANT = Entity("merchant", join_keys=["merchant_id"], description="A card acceptor.")

USER_TRANSACTIONS = FeatureView(
    name="user_transactions",
    entities=[USER],
    source=ParquetSource("data/transactions/*.parquet", "event_timestamp"),
    aggregations=[
        Aggregation("amount", "sum", "7d", name="spend_7d"),
        Aggregation(None, "count", "1d", name="txn_count_1d"),
        Aggregation("amount", "mean", "30d", name="avg_amount_30d"),
    ],
    description="A user's spending over 7 days, transactions over 1 day and mean amount over 30 days.",
    owner="fraud-team",
)
# A label counts once the system has it (created = when it was delivered), for the transaction's own time.
MERCHANT_LABELS = FeatureView(
    name="merchant_labels",
    entities=[MERCHANT],
    source=ParquetSource("data/labels/*.parquet", "event_timestamp", "delivered_at"),
    aggregations=[
        Aggregation("is_fraud", "sum", "30d", name="fraud_30d"),
        Aggregation("is_fraud", "count", "30d", name="labelled_30d"),
    ],
    description="Chargebacks and labelled transactions of a merchant over 30 days, as known at the time.",
    owner="fraud-team",
)


@on_demand_feature_view(
    sources=["merchant_labels:fraud_30d", "merchant_labels:labelled_30d"], schema=[Field("fraud_rate_30d")]
)
def merchant_risk(inputs: dict[str, list]) -> dict[str, list]:
    """Share of a merchant's labelled transactions of the last 30 days that were fraud, smoothed."""
    return {
        "fraud_rate_30d": [
            ((fraud or 0.0) + 0.4) / ((labelled or 0) + 20.0)
            for fraud, labelled in zip(inputs["fraud_30d"], inputs["labelled_30d"], strict=True)
        ]
    }


FRAUD_SERVICE = FeatureService(
    "fraud_detector",
    [
        "user_transactions:spend_7d",
        "user_transactions:txn_count_1d",
        "user_transactions:avg_amount_30d",
        "merchant_risk:fraud_rate_30d",
    ],
    description="What the fraud model reads, in training and in serving.",
)
DEFINITIONS = [USER, MERCHANT, USER_TRANSACTIONS, MERCHANT_LABELS, merchant_risk, FRAUD_SERVICE]
REQUEST_FEATURES = ("amount", "merchant_category")
