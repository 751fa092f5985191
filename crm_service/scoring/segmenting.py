"""Tiers, value and RFM segments, recommended actions and their counts (DESIGN.md §2).

Pure numpy over the run's arrays (no I/O); the names behind the codes are returned for the
score rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from crm_service.scoring.inputs import PreviousTiers, Summary
from models import segments
from models.segments import TierPolicy


def assign_segments(summary: Summary, computed: dict[str, NDArray[np.float64]],
                    policy: TierPolicy, previous: PreviousTiers,
                    high_risk: float, counts: dict[str, Any]) -> dict[str, list[str]]:
    """Tier, value segment, RFM scores and segment, and action per customer (DESIGN.md §2).

    ``previous`` holds the live run's tiers (hysteresis, tier since). Adds the code arrays to
    ``computed`` and per-category counts to ``counts``; returns the names behind the codes.
    """
    prev_code, prev_since, live = previous.code, previous.since_days, previous.live
    since_last = summary.T - summary.recency
    churn = computed["churn_probability"]
    tiers = segments.assign_tiers(
        policy, days_since_first=summary.T, days_since_last=since_last, churn=churn,
        clv=computed["clv_12m"], was_high_value=prev_code == segments.TIERS.index("high_value"))
    kept = tiers == prev_code
    # Since when: carried forward while the tier holds; from this run when it changes. The
    # first run of a database has nothing to change from, so it records no transitions.
    computed["tier_since_days"] = np.where(kept, prev_since, 0.0)
    counts["tier_changes"] = int(np.count_nonzero(~kept & live))
    value = segments.value_segments(summary.historic_spend, policy)
    r, f, m = segments.rfm_scores(since_last, summary.frequency + 1, summary.historic_spend)
    rfm = segments.rfm_segments(r, f, m)
    actions = segments.recommended_actions(policy, tiers, value, churn >= high_risk)
    # Rank boundaries as values: a provisional tier between runs is placed with them.
    counts["cutoffs"] = segments.run_cutoffs(
        policy, days_since_last=since_last, occasions=summary.frequency + 1,
        spend=summary.historic_spend, clv=computed["clv_12m"], tiers=tiers, rfm=(r, f, m))
    names = {"tiers": list(segments.TIERS), "values": list(segments.VALUE_SEGMENTS),
             "rfm": list(segments.RFM_SEGMENTS), "actions": segments.action_names(policy)}
    for key, codes in (("tier_code", tiers), ("value_code", value), ("rfm_recency", r),
                       ("rfm_frequency", f), ("rfm_monetary", m), ("rfm_code", rfm),
                       ("action_code", actions)):
        computed[key] = codes.astype(np.float64)
    for label, codes, key in (("tiers", tiers, "tiers"), ("value_segments", value, "values"),
                              ("rfm_segments", rfm, "rfm"), ("actions", actions, "actions")):
        tally = np.bincount(codes, minlength=len(names[key]))
        counts[label] = {name: int(n) for name, n in zip(names[key], tally, strict=True)}
    # Per segment: customers, historic spend and predicted CLV (GET /v1/segments).
    counts["segments"] = {}
    for label, codes, key in (("tier", tiers, "tiers"), ("value_segment", value, "values"),
                              ("rfm_segment", rfm, "rfm")):
        k = len(names[key])
        n = np.bincount(codes, minlength=k)
        spend = np.bincount(codes, weights=summary.historic_spend, minlength=k)
        clv = np.bincount(codes, weights=np.nan_to_num(computed["clv_12m"]), minlength=k)
        counts["segments"][label] = {
            name: {"customers": int(n[j]), "historic_spend": round(float(spend[j]), 2),
                   "clv_12m": round(float(clv[j]), 2)} for j, name in enumerate(names[key])}
    # Tier transition matrix against the previous live run ("none": not scored there).
    if live:
        matrix: dict[str, dict[str, int]] = {}
        pairs = np.bincount((prev_code.astype(np.int64) + 1) * len(segments.TIERS) + tiers,
                            minlength=(len(segments.TIERS) + 1) * len(segments.TIERS))
        for j, n_pair in enumerate(pairs):
            if n_pair:
                before = "none" if j // len(segments.TIERS) == 0 else \
                    segments.TIERS[j // len(segments.TIERS) - 1]
                matrix.setdefault(before, {})[segments.TIERS[j % len(segments.TIERS)]] = \
                    int(n_pair)
        counts["tier_transition_matrix"] = matrix
    return names
