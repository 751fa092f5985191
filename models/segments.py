"""Lifecycle tiers, value segments, RFM segments and recommended actions (DESIGN.md §2).

Pure functions over per-customer arrays; the tier policy is a plain, validated dataclass so the
service can version it and store it with each run.

- **Tier** (first match wins): ``new`` (first occasion within ``new_days``), ``dormant`` (no
  occasion in ``dormant_days``, or churn probability >= ``dormant_churn``), ``high_value``
  (12-month CLV in the top ``high_value_share`` of the customers who are neither new nor
  dormant; a customer who was high-value in the previous run keeps the tier while their CLV is
  in the top ``high_value_keep_share`` — hysteresis, so nobody flaps between runs), else
  ``active``.
- **Value segment** from historic net spend: top ``value_high_share`` ``high``, the next
  ``value_medium_share`` ``medium``, the rest ``low``.
- **RFM scores** 1-5: quintiles of recency (days since the last occasion; more recent scores
  higher), frequency (occasions) and monetary (historic spend), assigned like dplyr's
  ``ntile`` (equal-sized groups in rank order, ties broken by a stable sort), as the R package
  ``rfm`` does.
- **RFM segment**: the rules of ``rfm`` 0.3.0 (``rfm_segment`` documentation), first match
  wins, else ``others``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import NDArray

# The vocabulary, defined here once: the API's schemas, webhook filters, the console and the
# database's CHECK constraints (tests/test_segments.py compares them) use these.
TIERS = ("new", "active", "dormant", "high_value")
VALUE_SEGMENTS = ("low", "medium", "high")
CHURN_RISKS = ("low", "medium", "high")  # in rising order of risk
# Why a customer's P(alive) and churn band may look contradictory (see alive_notes).
ALIVE_NOTES = ("not_estimated", "infrequent_buyer")
ALIVE_NOTE_THRESHOLD = 0.9
# (name, recency lower/upper, frequency lower/upper, monetary lower/upper): rfm 0.3.0.
RFM_RULES = (
    ("champions", 5, 5, 5, 5, 5, 5),
    ("potential_loyalist", 3, 5, 3, 5, 2, 5),
    ("loyal_customers", 2, 4, 2, 4, 2, 4),
    ("promising", 3, 4, 1, 3, 3, 5),
    ("new_customers", 4, 5, 1, 3, 1, 5),
    ("cant_lose_them", 1, 2, 3, 4, 4, 5),
    ("at_risk", 1, 2, 2, 5, 4, 5),
    ("need_attention", 1, 3, 3, 5, 3, 5),
    ("about_to_sleep", 2, 3, 1, 3, 1, 4),
    ("lost", 1, 1, 1, 5, 1, 5),
)
RFM_SEGMENTS = tuple(rule[0] for rule in RFM_RULES) + ("others",)
ACTIONS = ("welcome_second_purchase", "retention_offer", "cross_sell", "vip_care",
           "vip_win_back", "win_back")
DEFAULT_ACTIONS = {
    "new": "welcome_second_purchase",
    "active_high_churn_risk": "retention_offer",
    "active": "cross_sell",
    "high_value": "vip_care",
    "dormant_high_value_segment": "vip_win_back",
    "dormant": "win_back",
}


class PolicyError(ValueError):
    """A tier policy that cannot be applied (the message names the field)."""


@dataclass(frozen=True)
class TierPolicy:
    """Thresholds of the tier policy and the action mapping; defaults as in DESIGN.md §2."""

    new_days: int = 30
    dormant_days: int = 180
    dormant_churn: float = 0.9
    high_value_share: float = 0.10
    high_value_keep_share: float = 0.15
    value_high_share: float = 0.10
    value_medium_share: float = 0.40
    actions: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ACTIONS))

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise PolicyError(f"{name}: {rule}")

        def whole(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        need(whole(self.new_days) and 1 <= self.new_days <= 3650, "new_days",
             "a whole number of days, 1-3650")
        need(whole(self.dormant_days) and self.new_days < self.dormant_days <= 3650,
             "dormant_days", "a whole number of days above new_days, at most 3650")
        for name in ("dormant_churn", "high_value_share", "high_value_keep_share",
                     "value_high_share", "value_medium_share"):
            value = getattr(self, name)
            need(isinstance(value, (int, float)) and not isinstance(value, bool)
                 and 0 < value < 1, name, "a number strictly between 0 and 1")
        need(self.high_value_keep_share >= self.high_value_share, "high_value_keep_share",
             "at least high_value_share (hysteresis keeps customers in, never pushes out)")
        need(self.value_high_share + self.value_medium_share <= 1, "value_medium_share",
             "value_high_share + value_medium_share must not exceed 1")
        need(set(self.actions) == set(DEFAULT_ACTIONS), "actions",
             "exactly the keys " + ", ".join(DEFAULT_ACTIONS))
        for key, action in self.actions.items():
            need(isinstance(action, str) and 1 <= len(action) <= 64
                 and action.replace("_", "").isalnum(), f"actions.{key}",
                 "an action name of 1-64 letters, digits and underscores")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TierPolicy:
        """Build from JSON-like data; unknown fields are an error (a typo must not pass)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyError(f"{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")
        values = dict(data)
        if "actions" in values:
            if not isinstance(values["actions"], dict):
                raise PolicyError("actions: an object mapping situations to action names")
            values["actions"] = {**DEFAULT_ACTIONS, **values["actions"]}
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def ntile(values: NDArray[np.floating], bins: int = 5) -> NDArray[np.int8]:
    """Scores 1..bins in equal-sized groups of rank order (dplyr's ``ntile``)."""
    n = values.size
    out = np.empty(n, dtype=np.int8)
    if n == 0:
        return out
    order = np.argsort(values, kind="stable")
    out[order] = (np.arange(n) * bins // n + 1).astype(np.int8)
    return out


def rfm_scores(days_since_last: NDArray[np.floating], occasions: NDArray[np.floating],
               spend: NDArray[np.floating]) -> tuple[NDArray[np.int8], ...]:
    """R, F and M quintile scores (5 = most recent / most frequent / highest spend)."""
    return ntile(-np.asarray(days_since_last, dtype=float)), ntile(occasions), ntile(spend)


def rfm_segments(r: NDArray[np.int8], f: NDArray[np.int8],
                 m: NDArray[np.int8]) -> NDArray[np.int8]:
    """Index into :data:`RFM_SEGMENTS` per customer: first matching rule, else ``others``."""
    out = np.full(r.size, len(RFM_RULES), dtype=np.int8)
    unset = np.ones(r.size, dtype=bool)
    for k, (_, r_lo, r_hi, f_lo, f_hi, m_lo, m_hi) in enumerate(RFM_RULES):
        hit = unset & (r >= r_lo) & (r <= r_hi) & (f >= f_lo) & (f <= f_hi) \
            & (m >= m_lo) & (m <= m_hi)
        out[hit] = k
        unset &= ~hit
    return out


def _top_share(values: NDArray[np.floating], share: float,
               among: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Customers (within ``among``) whose value is in the top ``share`` of ``among``."""
    out = np.zeros(values.size, dtype=bool)
    pool = np.flatnonzero(among)
    take = int(np.floor(pool.size * share))
    if take == 0:
        return out
    order = pool[np.argsort(-values[pool], kind="stable")]
    out[order[:take]] = True
    return out


def value_segments(spend: NDArray[np.floating], policy: TierPolicy) -> NDArray[np.int8]:
    """Index into :data:`VALUE_SEGMENTS` by historic spend percentile."""
    everyone = np.ones(spend.size, dtype=bool)
    high = _top_share(spend, policy.value_high_share, everyone)
    upper = _top_share(spend, policy.value_high_share + policy.value_medium_share, everyone)
    out = np.zeros(spend.size, dtype=np.int8)
    out[upper] = 1
    out[high] = 2
    return out


def assign_tiers(policy: TierPolicy, *, days_since_first: NDArray[np.floating],
                 days_since_last: NDArray[np.floating], churn: NDArray[np.floating],
                 clv: NDArray[np.floating],
                 was_high_value: NDArray[np.bool_] | None = None) -> NDArray[np.int8]:
    """Index into :data:`TIERS` per customer (DESIGN.md §2, with hysteresis)."""
    n = days_since_first.size
    new = days_since_first < policy.new_days
    dormant = ~new & ((days_since_last >= policy.dormant_days) | (churn >= policy.dormant_churn))
    eligible = ~new & ~dormant
    clv = np.nan_to_num(np.asarray(clv, dtype=float), nan=0.0)
    high = _top_share(clv, policy.high_value_share, eligible)
    if was_high_value is not None:
        high |= was_high_value & _top_share(clv, policy.high_value_keep_share, eligible)
    out = np.full(n, TIERS.index("active"), dtype=np.int8)
    out[high] = TIERS.index("high_value")
    out[dormant] = TIERS.index("dormant")
    out[new] = TIERS.index("new")
    return out


def recommended_actions(policy: TierPolicy, tiers: NDArray[np.int8],
                        value: NDArray[np.int8],
                        high_churn_risk: NDArray[np.bool_]) -> NDArray[np.int8]:
    """Index into ``action_names(policy)`` per customer, from the policy's mapping."""
    names = action_names(policy)
    a = policy.actions
    out = np.empty(tiers.size, dtype=np.int8)
    tier = np.asarray(TIERS)[tiers]
    out[tier == "new"] = names.index(a["new"])
    out[tier == "high_value"] = names.index(a["high_value"])
    active = tier == "active"
    out[active] = names.index(a["active"])
    out[active & high_churn_risk] = names.index(a["active_high_churn_risk"])
    dormant = tier == "dormant"
    out[dormant] = names.index(a["dormant"])
    out[dormant & (value == VALUE_SEGMENTS.index("high"))] = names.index(
        a["dormant_high_value_segment"])
    return out


def action_names(policy: TierPolicy) -> list[str]:
    """The distinct action names of a policy, in a fixed order."""
    return sorted(set(policy.actions.values()))


# --- Cut-offs: the run's thresholds as values, for classifying one customer later -----------
#
# A run assigns tiers and segments by rank among all customers. To place one customer whose
# history changed after the run (a provisional tier) without re-ranking everyone, the run keeps
# the values at which each rank boundary fell; a customer at or above a boundary value is placed
# above it. Ties at a boundary can differ from a full re-rank; that is the price of O(1).

def _boundary(values: NDArray[np.floating], selected: NDArray[np.bool_]) -> float | None:
    """The smallest value among ``selected`` (None when nothing was selected)."""
    return float(values[selected].min()) if selected.any() else None


def _ntile_bounds(values: NDArray[np.floating], scores: NDArray[np.int8]) -> list[float | None]:
    """Per score 2..5, the smallest value that received it (None when no one did)."""
    return [_boundary(values, scores >= k) for k in range(2, 6)]


def run_cutoffs(policy: TierPolicy, *, days_since_last: NDArray[np.floating],
                occasions: NDArray[np.floating], spend: NDArray[np.floating],
                clv: NDArray[np.floating], tiers: NDArray[np.int8],
                rfm: tuple[NDArray[np.int8], NDArray[np.int8], NDArray[np.int8]]
                ) -> dict[str, Any]:
    """The value at each rank boundary a run drew (JSON-ready), for :func:`classify_one`."""
    clv = np.nan_to_num(np.asarray(clv, dtype=float), nan=0.0)
    eligible = (tiers != TIERS.index("new")) & (tiers != TIERS.index("dormant"))
    everyone = np.ones(spend.size, dtype=bool)
    r, f, m = rfm
    return {
        "high_value_clv": _boundary(clv, _top_share(clv, policy.high_value_share, eligible)),
        "high_value_keep_clv": _boundary(
            clv, _top_share(clv, policy.high_value_keep_share, eligible)),
        "value_high_spend": _boundary(spend, _top_share(spend, policy.value_high_share,
                                                        everyone)),
        "value_medium_spend": _boundary(spend, _top_share(
            spend, policy.value_high_share + policy.value_medium_share, everyone)),
        # Recency scores rank -days_since_last; bounds are kept as -days.
        "rfm_recency": _ntile_bounds(-np.asarray(days_since_last, dtype=float), r),
        "rfm_frequency": _ntile_bounds(np.asarray(occasions, dtype=float), f),
        "rfm_monetary": _ntile_bounds(np.asarray(spend, dtype=float), m),
    }


def _score(value: float, bounds: list[float | None]) -> int:
    score = 1
    for k, bound in enumerate(bounds, start=2):
        if bound is not None and value >= bound:
            score = k
    return score


def _at_least(value: float, bound: float | None) -> bool:
    return bound is not None and value >= bound


def classify_one(policy: TierPolicy, cutoffs: dict[str, Any], *, days_since_first: float,
                 days_since_last: float, occasions: int, spend: float, clv: float,
                 churn: float, high_churn_risk: bool, was_high_value: bool) -> dict[str, Any]:
    """Tier, value segment, RFM scores and segment, and action of one customer.

    The same rules as a run, with rank boundaries taken from the run's ``cutoffs``
    (:func:`run_cutoffs`).
    """
    clv = 0.0 if not np.isfinite(clv) else float(clv)
    if days_since_first < policy.new_days:
        tier = "new"
    elif days_since_last >= policy.dormant_days or churn >= policy.dormant_churn:
        tier = "dormant"
    elif _at_least(clv, cutoffs.get("high_value_clv")) or (
            was_high_value and _at_least(clv, cutoffs.get("high_value_keep_clv"))):
        tier = "high_value"
    else:
        tier = "active"
    if _at_least(spend, cutoffs.get("value_high_spend")):
        value = "high"
    elif _at_least(spend, cutoffs.get("value_medium_spend")):
        value = "medium"
    else:
        value = "low"
    r = _score(-days_since_last, cutoffs["rfm_recency"])
    f = _score(occasions, cutoffs["rfm_frequency"])
    m = _score(spend, cutoffs["rfm_monetary"])
    segment = RFM_SEGMENTS[int(rfm_segments(np.array([r], dtype=np.int8),
                                            np.array([f], dtype=np.int8),
                                            np.array([m], dtype=np.int8))[0])]
    names = action_names(policy)
    action = names[int(recommended_actions(
        policy, np.array([TIERS.index(tier)], dtype=np.int8),
        np.array([VALUE_SEGMENTS.index(value)], dtype=np.int8),
        np.array([high_churn_risk]))[0])]
    return {"tier": tier, "value_segment": value, "rfm_recency": r, "rfm_frequency": f,
            "rfm_monetary": m, "rfm_segment": segment, "recommended_action": action}


def alive_notes(p_alive: NDArray[np.floating], frequency: NDArray[np.floating],
                churn_probability: NDArray[np.floating], *, high_risk: float,
                one_time_buyers_assumed_alive: bool) -> NDArray[np.int8]:
    """Index into :data:`ALIVE_NOTES` (-1: none) saying why P(alive) and the churn band differ.

    P(alive) is the purchase model's probability that the customer has not left for good;
    the churn probability is the probability of no order in the next H days. They answer
    different questions, and two cases look contradictory on a page:

    - ``not_estimated``: the selected model is BG/NBD and the customer has no repeat purchase.
      BG/NBD lets a customer drop out only right after a repeat purchase (Fader, Hardie & Lee
      2005, assumption iii), so its P(alive) is 1 for every one-time buyer by assumption, not
      by evidence; surfaces show it as not estimated.
    - ``infrequent_buyer``: otherwise, P(alive) >= 0.9 with a high churn risk: probably still
      a customer, but unlikely to order within H days. The churn probability may be the churn
      classifier's rather than the purchase model's, so this can also be the two models
      weighing the history differently; the note says what an agent should take from it.
    """
    p_alive = np.asarray(p_alive, dtype=np.float64)
    out = np.full(p_alive.shape, -1, dtype=np.int8)
    high = (np.asarray(churn_probability, dtype=np.float64) >= high_risk) \
        & (p_alive >= ALIVE_NOTE_THRESHOLD)
    out[high] = ALIVE_NOTES.index("infrequent_buyer")
    if one_time_buyers_assumed_alive:
        out[np.asarray(frequency) == 0] = ALIVE_NOTES.index("not_estimated")
    return out
