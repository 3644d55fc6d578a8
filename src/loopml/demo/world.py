"""A synthetic card-fraud world with a fixed seed.

Users with their own spending scale buy from merchants in a few categories; a handful of compromised
merchants and large purchases carry most fraud. Chargebacks (labels) arrive one to six days after the
transaction. On `change_day` the world changes: a new merchant category (crypto) opens, amounts rise by a
third, fraudsters in the old categories start mimicking ordinary amounts, and fraud in the new category is
card testing (small amounts): the opposite of what the first model learned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

CATEGORIES = ("grocery", "restaurants", "fuel", "travel", "electronics", "fashion")
CATEGORY_WEIGHTS = (0.30, 0.22, 0.16, 0.10, 0.10, 0.12)
CATEGORY_SCALE = {
    "grocery": 1.0,
    "restaurants": 0.8,
    "fuel": 1.2,
    "travel": 4.0,
    "electronics": 3.0,
    "fashion": 1.6,
    "crypto": 5.0,
}
RISKY_CATEGORIES = ("travel", "electronics")
NEW_CATEGORY = "crypto"


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 7
    n_users: int = 800
    n_merchants: int = 120
    transactions_per_day: int = 300
    days: int = 91
    change_day: int = 66
    start: datetime = datetime(2026, 1, 1)
    amount_shift: float = 1.35
    new_category_share: float = 0.15


@dataclass(frozen=True)
class World:
    config: WorldConfig
    users: pd.DataFrame
    merchants: pd.DataFrame
    transactions: pd.DataFrame

    def day_start(self, day: int) -> pd.Timestamp:
        return pd.Timestamp(self.config.start + timedelta(days=day), tz="UTC")


def generate(config: WorldConfig) -> World:
    rng = np.random.default_rng(config.seed)
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, config.n_users + 1),
            "scale": np.exp(rng.normal(3.2, 0.5, config.n_users)),
            "activity": rng.gamma(2.0, 1.0, config.n_users),
        }
    )
    n_new = max(4, config.n_merchants // 10)
    merchants = pd.DataFrame(
        {
            "merchant_id": np.arange(1, config.n_merchants + n_new + 1),
            "category": [
                *rng.choice(CATEGORIES, config.n_merchants, p=CATEGORY_WEIGHTS),
                *[NEW_CATEGORY] * n_new,
            ],
            "risky": [*(rng.random(config.n_merchants) < 0.05), *[False] * n_new],
        }
    )
    days = [_day(config, rng, users, merchants, day) for day in range(config.days)]
    transactions = pd.concat(days, ignore_index=True)
    transactions.insert(0, "transaction_id", np.arange(1, len(transactions) + 1))
    return World(config, users, merchants, transactions)


def _day(
    config: WorldConfig, rng: np.random.Generator, users: pd.DataFrame, merchants: pd.DataFrame, day: int
) -> pd.DataFrame:
    changed = day >= config.change_day
    n = rng.poisson(config.transactions_per_day)
    user_index = rng.choice(len(users), n, p=(users.activity / users.activity.sum()).to_numpy())
    old = merchants.index[merchants.category != NEW_CATEGORY].to_numpy()
    new = merchants.index[merchants.category == NEW_CATEGORY].to_numpy()
    merchant_index = rng.choice(old, n)
    if changed:
        to_new = rng.random(n) < config.new_category_share
        merchant_index[to_new] = rng.choice(new, int(to_new.sum()))
    merchant = merchants.iloc[merchant_index]
    category = merchant.category.to_numpy()
    scale = users.scale.to_numpy()[user_index]
    noise = rng.lognormal(0.0, 0.6, n)
    amount = scale * np.array([CATEGORY_SCALE[c] for c in category]) * noise
    if changed:
        amount *= config.amount_shift
    logit = (
        -4.6
        + 2.6 * merchant.risky.to_numpy()
        + 1.0 * np.isin(category, RISKY_CATEGORIES)
        + (0.3 if changed else 1.8) * np.log(noise)
    )
    # Card testing at the new crypto merchants: small amounts are the fraud, the opposite of the old pattern.
    logit = np.where(category == NEW_CATEGORY, -2.2 - 2.6 * np.log(noise), logit)
    is_fraud = rng.random(n) < 1 / (1 + np.exp(-logit))
    start = pd.Timestamp(config.start + timedelta(days=day), tz="UTC")
    times = start + pd.to_timedelta(np.sort(rng.integers(0, 86_400, n)), unit="s")
    delay = pd.to_timedelta(np.round(np.minimum(1 + rng.exponential(1.0, n), 6.0) * 86_400), unit="s")
    return pd.DataFrame(
        {
            "user_id": users.user_id.to_numpy()[user_index],
            "merchant_id": merchant.merchant_id.to_numpy(),
            "merchant_category": category,
            "amount": np.round(amount, 2),
            "event_timestamp": times,
            "is_fraud": is_fraud.astype(int),
            "label_available_at": times + delay,
        }
    )
