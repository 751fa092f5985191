"""The pure scoring pipeline (``score_base``): scored without PostgreSQL, from arrays alone."""

from datetime import date, timedelta

import numpy as np
import pytest

from crm_service.scoring import churn
from crm_service.scoring.backtest import InsufficientHistoryError
from crm_service.scoring.inputs import (
    COMPUTED,
    RAW_CHURN,
    ChurnInputs,
    PreviousTiers,
    RunConfig,
    RunInputs,
)
from crm_service.scoring.pipeline import score_base
from models import segments
from models.segments import TierPolicy
from tests.cdnow import cdnow_rfm, cdnow_summary


def _inputs(as_of="1997-09-30", previous=None, policy=None):
    s = cdnow_summary(as_of)
    return RunInputs(summary=s, previous=previous or PreviousTiers.none(s.size),
                     policy_version=1, policy=policy or TierPolicy())


def test_cdnow_scored_without_a_database_matches_the_published_fits():
    scored = score_base(_inputs(), RunConfig(churn_model="baseline"))
    bg = scored.models["bgnbd"]["params"]
    # Fader, Hardie & Lee 2005 (weeks): r 0.243, alpha 4.414, a 0.793, b 2.426.
    assert (bg["r"], bg["alpha"] / 7, bg["a"], bg["b"]) == pytest.approx(
        (0.243, 4.414, 0.793, 2.426), rel=0.005)
    gg = scored.models["gamma_gamma"]["params"]
    assert (gg["p"], gg["q"], gg["v"]) == pytest.approx((6.25, 3.74, 15.44), rel=0.005)
    assert scored.counts["customers"] == 2357
    assert set(scored.computed) == set(COMPUTED)
    assert all(a.shape == (2357,) for a in scored.computed.values())
    assert sum(scored.counts["tiers"].values()) == 2357
    assert scored.models["churn"]["used"] == "btyd_baseline"
    assert set(scored.stage_seconds) == {"fits", "scores", "churn", "tiers"}
    # The summary built here is the one the SQL builds (same definition, checked elsewhere
    # against PostgreSQL): its calibration arrays are the published CDNOW ones.
    ref = cdnow_rfm()
    s = cdnow_summary()
    np.testing.assert_array_equal(s.frequency, ref["frequency"])
    np.testing.assert_array_equal(s.T, ref["T"])


def test_first_run_changes_no_tier_and_a_second_keeps_high_value_by_hysteresis():
    first = score_base(_inputs(), RunConfig(churn_model="baseline"))
    assert first.counts["tier_changes"] == 0
    assert np.all(first.computed["tier_since_days"] == 0)
    tiers = first.computed["tier_code"].astype(np.int8)
    hv = segments.TIERS.index("high_value")
    # Everyone scored high value last time: those still eligible (not new or dormant) and
    # above the 85th percentile keep it; the top 10% rule alone would drop some of them.
    prev = PreviousTiers(np.full(tiers.size, hv, dtype=np.int8), np.full(tiers.size, 30.0), True)
    second = score_base(_inputs(previous=prev), RunConfig(churn_model="baseline"))
    kept = second.computed["tier_code"] == hv
    assert kept.sum() > (tiers == hv).sum()
    assert np.all(second.computed["tier_since_days"][kept] == 30.0)
    assert np.all(second.computed["tier_since_days"][~kept] == 0.0)
    assert second.counts["tier_changes"] == int((~kept).sum())


def test_a_policy_is_applied_and_recorded():
    strict = TierPolicy.from_dict({**TierPolicy().as_dict(), "new_days": 240,
                                  "dormant_days": 365})
    scored = score_base(_inputs(policy=strict), RunConfig(churn_model="baseline"))
    assert scored.models["tier_policy"]["new_days"] == 240
    default = score_base(_inputs(), RunConfig(churn_model="baseline"))
    assert scored.counts["tiers"]["new"] > default.counts["tiers"]["new"]


def test_too_little_history_is_refused_before_any_fit():
    with pytest.raises(InsufficientHistoryError, match="days of history"):
        score_base(_inputs("1997-01-10"), RunConfig())


def test_the_churn_stage_needs_its_inputs_and_names_the_cut_offs_it_reads():
    as_of, horizon = date(1998, 6, 30), 90
    assert not churn.wanted("auto", 2 * horizon - 1, horizon)
    assert not churn.wanted("baseline", 10_000, horizon)
    assert churn.wanted("auto", 2 * horizon, horizon)
    cuts = churn.cutoffs(as_of, horizon, span_days=540)
    assert cuts == sorted(cuts) and as_of - timedelta(days=horizon) in cuts
    assert all((c - (as_of - timedelta(days=540))).days >= churn.MIN_WINDOW_HISTORY
               for c in cuts)
    with pytest.raises(ValueError, match="churn inputs were not loaded"):
        score_base(_inputs("1998-06-30"), RunConfig(churn_model="ml"))


def test_churn_inputs_that_cannot_train_fall_back_to_the_baseline():
    """Windows with too few customers: the baseline scores, and the run says why."""
    inputs = _inputs("1998-06-30")
    s = inputs.summary
    empty = np.zeros((10, len(RAW_CHURN)), dtype=np.float32)
    empty[:, RAW_CHURN.index("T")] = 100.0
    cuts = churn.cutoffs(s.as_of, 90, s.span_days)
    inputs.churn = ChurnInputs(windows={c: empty for c in cuts},
                               now=np.zeros((s.size, len(RAW_CHURN)), dtype=np.float32),
                               share=1.0)
    scored = score_base(inputs, RunConfig(churn_model="auto"))
    info = scored.models["churn"]
    assert info["used"] == "btyd_baseline" and "customers (need" in info["reason"]
    p = scored.computed["churn_probability"]
    assert np.all((p >= 0) & (p <= 1))
