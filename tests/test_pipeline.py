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
    assert set(scored.stage_seconds) == {"fits", "scores", "intervals", "churn", "tiers"}
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


# --- occasions -> summary and churn aggregates, against the definitions (pandas) -----------

def _random_occasions(seed=3, customers=400):
    import pandas as pd

    from crm_service.scoring.occasions import EPOCH, Occasions

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(customers):
        first = int(rng.integers(0, 500))
        k = 1 + rng.poisson(2.0)
        days_ = np.unique(first + np.concatenate([[0], rng.integers(1, 400, size=k - 1)]))
        for d in days_:
            rows.append((i, int(d), int(rng.integers(100, 50_000)), int(rng.integers(1, 3)),
                         int(rng.integers(0, 3))))
    occ = pd.DataFrame(rows, columns=["i", "day", "cents", "orders", "channel"])
    occ = occ[occ["day"] <= 800]
    refunds = occ.sample(frac=0.1, random_state=seed)[["i", "day"]].assign(n=1)
    shuffled = occ.sample(frac=1.0, random_state=seed)  # the reader's order is not fixed
    arrays = Occasions(
        customer=shuffled["i"].to_numpy(np.int32), day=shuffled["day"].to_numpy(np.int32),
        cents=shuffled["cents"].to_numpy(np.int64),
        paid_orders=shuffled["orders"].to_numpy(np.int32),
        channel=shuffled["channel"].to_numpy(np.int32),
        bucket=(shuffled["i"].to_numpy(np.int32) * 7919) % 65536, customers=customers,
        refund_customer=refunds["i"].to_numpy(np.int32),
        refund_day=refunds["day"].to_numpy(np.int32),
        refund_orders=refunds["n"].to_numpy(np.int32))
    return occ, refunds, arrays, EPOCH + timedelta(days=800)


def _expected_raw(occ, refunds, cut, horizon):
    """RAW_CHURN straight from the definitions, one customer at a time."""
    out = {}
    for i, g in occ.groupby("i"):
        g = g.sort_values("day")
        p = g[g["day"] <= cut]
        if p.empty:
            continue
        gaps = p["day"].diff().dropna()
        r = refunds[(refunds["i"] == i) & (refunds["day"] <= cut)]["n"].sum()
        def spend(lo, hi=cut, p=p):
            return p[(p["day"] > lo) & (p["day"] <= hi)]["cents"].sum() / 100

        def count(lo, p=p):
            return float((p["day"] > lo).sum())

        dates = [date(2000, 1, 1) + timedelta(days=int(d)) for d in p["day"]]
        out[i] = {
            "frequency": len(p) - 1, "recency": p["day"].iloc[-1] - p["day"].iloc[0],
            "T": cut - p["day"].iloc[0],
            "std_interval": gaps.std(ddof=1) if len(gaps) >= 2 else np.nan,
            "last_interval": gaps.iloc[-1] if len(gaps) else np.nan,
            "max_interval": gaps.max() if len(gaps) else np.nan,
            "occasions_30": count(cut - 30), "occasions_90": count(cut - 90),
            "occasions_180": count(cut - 180), "occasions_365": count(cut - 365),
            "spend_30": spend(cut - 30), "spend_90": spend(cut - 90),
            "spend_180": spend(cut - 180), "spend_365": spend(cut - 365),
            "spend_prev_90": spend(cut - 180, cut - 90),
            "historic_spend": p["cents"].sum() / 100,
            "channels": p["channel"].nunique(),
            "first_channel_share": (p["channel"] == g["channel"].iloc[0]).mean(),
            "refund_share": r / (p["orders"].sum() + r),
            "active_months": len({(t.year, t.month) for t in dates}),
            "first_spend": p["cents"].iloc[0] / 100,
            "future": float(((g["day"] > cut) & (g["day"] <= cut + horizon)).sum()),
        }
    return out


def test_churn_aggregates_follow_their_definitions():
    from crm_service.scoring.occasions import churn_raw, day_number

    occ, refunds, arrays, as_of = _random_occasions()
    for cutoff in (as_of - timedelta(days=90), as_of - timedelta(days=300), as_of):
        cut = day_number(cutoff)
        expected = _expected_raw(occ, refunds, cut, 90)
        got = churn_raw(arrays, cutoff, 90)
        assert got.shape == (len(expected), len(RAW_CHURN))
        want = np.array([[expected[i][c] for c in RAW_CHURN] for i in sorted(expected)],
                        dtype=np.float32)
        np.testing.assert_allclose(got, want, rtol=1e-5, equal_nan=True)
    even = np.arange(arrays.customers) % 2 == 0
    kept = churn_raw(arrays, as_of, 90, keep=even)
    assert kept.shape[0] == (arrays.customers + 1) // 2
    # The sample's own arrays give the same rows as the mask over the whole base.
    np.testing.assert_array_equal(churn_raw(arrays.subset(even), as_of, 90), kept)


def test_summary_follows_its_definition():
    from crm_service.scoring.occasions import day_number, summarize

    occ, _, arrays, as_of = _random_occasions(seed=5)
    s = summarize(arrays, as_of)
    g = occ.sort_values(["i", "day"]).groupby("i")
    first, last, n = g["day"].min(), g["day"].max(), g.size()
    np.testing.assert_array_equal(s.frequency, n - 1)
    np.testing.assert_array_equal(s.recency, last - first)
    np.testing.assert_array_equal(s.T, day_number(as_of) - first)
    repeat = occ.sort_values(["i", "day"]).groupby("i").apply(
        lambda x: x["cents"].iloc[1:].mean() if len(x) > 1 else 0.0, include_groups=False)
    np.testing.assert_allclose(s.monetary_value, np.floor(repeat.to_numpy() + 0.5) / 100)
    cal = day_number(s.calibration_end)
    in_cal = first <= cal
    np.testing.assert_array_equal(s.in_calibration, in_cal)
    cal_n = occ[occ["day"] <= cal].groupby("i").size()
    np.testing.assert_array_equal(s.calibration.frequency, cal_n - 1)
    assert s.repeats.sum() == (n - 1).sum() and s.firsts.sum() == arrays.customers


# --- the whole run on the CDNOW occasions, no database ------------------------------------

def _cdnow_run(as_of, config):
    from crm_service.scoring import occasions
    from tests.cdnow import cdnow_occasions

    occ = cdnow_occasions(as_of.isoformat())
    s = occasions.summarize(occ, as_of)
    inputs = RunInputs(summary=s, previous=PreviousTiers.none(s.size), policy_version=1,
                       policy=TierPolicy())
    if churn.wanted(config.churn_model, s.span_days, config.churn_horizon_days):
        inputs.churn = occasions.churn_inputs(occ, as_of, config.churn_horizon_days,
                                              s.span_days)
    return score_base(inputs, config), s


def test_occasion_arrays_give_the_summary_of_the_definition():
    from crm_service.scoring import occasions
    from tests.cdnow import cdnow_occasions

    got = occasions.summarize(cdnow_occasions("1997-09-30"), date(1997, 9, 30))
    want = cdnow_summary("1997-09-30")
    for name in ("frequency", "recency", "T", "monetary_value", "historic_spend",
                 "in_calibration", "repeats", "firsts"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), atol=1e-9)
    assert got.days == want.days and got.calibration_end == want.calibration_end
    np.testing.assert_array_equal(got.calibration.recency, want.calibration.recency)


@pytest.mark.parametrize("policy", ["ml", "baseline"])
def test_churn_model_policy(policy):
    scored, _ = _cdnow_run(date(1998, 6, 30), RunConfig(churn_model=policy))
    info = scored.models["churn"]
    assert info["policy"] == policy
    assert info["used"] == ("ml" if policy == "ml" else "btyd_baseline")
    if policy == "ml":
        assert "validation" in info and info["training_rows"] > 2357
        assert scored.churn_artifact is not None
    else:
        assert "validation" not in info and "CRM_CHURN_MODEL=baseline" in info["reason"]
        assert scored.churn_artifact is None


def test_short_history_uses_the_baseline_and_says_why():
    scored, _ = _cdnow_run(date(1997, 9, 30), RunConfig(churn_horizon_days=180))
    info = scored.models["churn"]
    assert info["used"] == "btyd_baseline" and "needs 360" in info["reason"]
    p = scored.computed["churn_probability"]
    assert np.all((p >= 0) & (p <= 1)) and scored.churn_artifact is None


def test_tracking_data_is_consistent():
    scored, _ = _cdnow_run(date(1998, 6, 30), RunConfig(churn_model="baseline"))
    d = scored.diagnostics
    actual = d["actual_cumulative"]
    assert actual == sorted(actual)  # cumulative
    # All repeat occasions up to as_of: occasions minus customers.
    assert actual[-1] == scored.counts["occasions"] - scored.counts["customers"]
    for series in d["predicted_cumulative"].values():
        assert series == sorted(series) and len(series) == len(actual)
        # Fitted on 3/4 of the history, the model tracks the total within 15%.
        assert series[-1] == pytest.approx(actual[-1], rel=0.15)


def test_the_previous_runs_fits_only_warm_start_this_one():
    """Started from the live run's parameters, the fits land on the same optimum."""
    cold = score_base(_inputs("1998-06-30"), RunConfig(churn_model="baseline"))
    warm_inputs = _inputs("1998-06-30")
    warm_inputs.previous_models = cold.models
    warm = score_base(warm_inputs, RunConfig(churn_model="baseline"))
    for name in ("bgnbd", "pareto_nbd"):
        for key in ("params",):
            for k, v in cold.models[name][key].items():
                assert warm.models[name][key][k] == pytest.approx(v, rel=1e-4)
        for k, v in cold.models[name]["holdout"]["calibration_params"].items():
            assert warm.models[name]["holdout"]["calibration_params"][k] == pytest.approx(
                v, rel=1e-4)
    np.testing.assert_allclose(warm.computed["clv_12m"], cold.computed["clv_12m"], rtol=1e-3)
    # A record of another shape is ignored, not an error.
    odd = _inputs("1998-06-30")
    odd.previous_models = {"bgnbd": {"params": {"r": "x"}}, "pareto_nbd": "?"}
    assert score_base(odd, RunConfig(churn_model="baseline")).counts["customers"] == 2357
