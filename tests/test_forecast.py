"""MBG/NBD against lifetimes, and the predictive distributions (models.forecast) against
lifetimes' conditional pmf, their own point forecasts, root finding and simulation with known
truth (issue 19)."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from models import forecast
from models.beta_geo import BetaGeoModel
from models.modified_beta_geo import ModifiedBetaGeoModel, _log_likelihood_terms
from models.pareto_nbd import ParetoNBDModel
from models.segments import ALIVE_NOTES, alive_notes
from tests.cdnow import cdnow_rfm
from tests.test_models import params_bg, rel, rfm_rows

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, ModifiedBetaGeoFitter, ParetoNBDFitter

MODELS = (BetaGeoModel, ModifiedBetaGeoModel, ParetoNBDModel)


@pytest.fixture(scope="module")
def cdnow():
    return cdnow_rfm()


@pytest.fixture(scope="module")
def weeks(cdnow):
    return cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7


@pytest.fixture(scope="module")
def mbg_ref(weeks):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModifiedBetaGeoFitter().fit(*weeks)


def oracle_mbg(params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ModifiedBetaGeoFitter()
        m.params_ = pd.Series(params)
    return m


# -- MBG/NBD ------------------------------------------------------------------------------------

def test_mbgnbd_fit_equals_lifetimes_on_cdnow(weeks, mbg_ref):
    ours = ModifiedBetaGeoModel().fit(*weeks)
    for k in ("r", "alpha", "a", "b"):
        assert ours.params_[k] == pytest.approx(mbg_ref.params_[k], rel=1e-6)
        assert ours.standard_errors_[k] == pytest.approx(mbg_ref.standard_errors_[k], rel=0.02)
    assert ours.label == "MBG/NBD"


def test_mbgnbd_predictions_equal_lifetimes_on_cdnow(weeks, mbg_ref):
    x, t_x, big_t = weeks
    model = ModifiedBetaGeoModel.from_params(dict(mbg_ref.params_))
    assert rel(model.probability_alive(x, t_x, big_t),
               mbg_ref.conditional_probability_alive(x, t_x, big_t)) < 1e-6
    for t in (1.0, 13.0, 39.0):
        assert rel(model.conditional_expected_purchases(t, x, t_x, big_t),
                   mbg_ref.conditional_expected_number_of_purchases_up_to_time(
                       t, x, t_x, big_t)) < 1e-6
    grid = np.array([0.5, 5.0, 52.0, 78.0])
    assert rel(model.expected_purchases_new_customer(grid),
               mbg_ref.expected_number_of_purchases_up_to_time(grid)) < 1e-6


@settings(max_examples=60, deadline=None)
@given(params_bg, st.lists(rfm_rows(), min_size=1, max_size=20))
def test_mbgnbd_equals_lifetimes_on_random_inputs(params, rows):
    x, t_x, big_t = (np.array(c) for c in zip(*rows, strict=True))
    model = ModifiedBetaGeoModel.from_params(params)
    oracle = oracle_mbg(params)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_alive = np.asarray(oracle.conditional_probability_alive(x, t_x, big_t))
        ref_exp = np.asarray(oracle.conditional_expected_number_of_purchases_up_to_time(
            30, x, t_x, big_t))
    ok = np.isfinite(ref_alive) & np.isfinite(ref_exp) & (params["r"] + x <= 200)
    if ok.any():
        assert rel(model.probability_alive(x, t_x, big_t)[ok], ref_alive[ok]) < 1e-6
        assert rel(model.conditional_expected_purchases(30, x, t_x, big_t)[ok],
                   ref_exp[ok]) < 1e-6


def test_mbgnbd_gradient_is_the_likelihoods(weeks):
    x, t_x, big_t = weeks
    p = np.array([0.5, 8.0, 0.9, 3.0])
    ll, grad = _log_likelihood_terms(p, x, t_x, big_t)
    for i in range(4):
        h = 1e-6 * p[i]
        up, down = p.copy(), p.copy()
        up[i] += h
        down[i] -= h
        numeric = (_log_likelihood_terms(up, x, t_x, big_t)[0].sum()
                   - _log_likelihood_terms(down, x, t_x, big_t)[0].sum()) / (2 * h)
        assert grad[i].sum() == pytest.approx(numeric, rel=1e-5)


@settings(max_examples=150, deadline=None)
@given(st.fixed_dictionaries({"r": st.floats(1e-3, 1e3), "alpha": st.floats(1e-3, 1e4),
                              "a": st.floats(1e-3, 1e3), "b": st.floats(1e-3, 1e3)}),
       rfm_rows(max_x=10_000))
def test_mbgnbd_predictions_are_finite_and_sane(params, row):
    model = ModifiedBetaGeoModel.from_params(params)
    x, t_x, big_t = row
    alive = model.probability_alive(x, t_x, big_t)
    assert np.all(np.isfinite(alive)) and np.all((alive >= 0) & (alive <= 1))
    exp = model.conditional_expected_purchases(np.array([0.0, 1.0, 30.0, 365.0, 3650.0]),
                                               x, t_x, big_t)
    assert np.all(np.isfinite(exp)) and np.all(exp >= -1e-9)
    assert np.all(np.diff(exp) >= -1e-9 * np.maximum(1, np.abs(exp[1:])))


def test_one_time_buyers_can_be_gone_under_mbgnbd_but_not_bgnbd():
    params = {"r": 0.25, "alpha": 30.0, "a": 0.8, "b": 2.5}
    ages = np.array([30.0, 365.0, 730.0])
    zero = np.zeros(3)
    assert np.all(BetaGeoModel.from_params(params).probability_alive(zero, zero, ages) == 1)
    mbg = ModifiedBetaGeoModel.from_params(params).probability_alive(zero, zero, ages)
    assert np.all(mbg < 1) and np.all(np.diff(mbg) < 0)  # the longer quiet, the likelier gone


def test_mbgnbd_is_a_holdout_candidate():
    from models.purchase import PURCHASE_MODELS, label

    assert PURCHASE_MODELS["mbgnbd"] is ModifiedBetaGeoModel and label("mbgnbd") == "MBG/NBD"


# -- predictive distributions -------------------------------------------------------------------

@pytest.mark.parametrize("cls", MODELS)
def test_pmf_agrees_with_the_models_own_forecasts_on_cdnow(cls, cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    model = cls().fit(x, t_x, big_t)
    for t in (30.0, 273.0, 365.0):
        dist = forecast.purchase_distribution(model, t, x, t_x, big_t)
        assert rel(dist.mean(), model.conditional_expected_purchases(t, x, t_x, big_t)) < 1e-5
        assert np.max(np.abs(dist.cdf(0) - model.probability_no_purchases(t, x, t_x, big_t))) \
            < 1e-12
        assert np.all(np.abs(dist.cdf(10**6) - 1) < 1e-6)


def test_pareto_pmf_equals_lifetimes_conditional_pmf(cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ref = ParetoNBDFitter().fit(x, t_x, big_t)
        expected = np.stack([ref.conditional_probability_of_n_purchases_up_to_time(
            k, 273.0, x, t_x, big_t) for k in range(8)], axis=1)
    dist = forecast.purchase_distribution(ParetoNBDModel.from_params(dict(ref.params_)), 273.0,
                                          x, t_x, big_t)
    ours = np.diff(np.concatenate([np.zeros((x.size, 1)), np.stack(
        [dist.cdf(k) for k in range(8)], axis=1)], axis=1), axis=1)
    assert np.max(np.abs(ours - expected)) < 1e-9


@pytest.mark.parametrize("ours, theirs", [(BetaGeoModel, BetaGeoFitter),
                                          (ModifiedBetaGeoModel, ModifiedBetaGeoFitter)])
def test_bg_family_pmf_of_a_new_customer_equals_lifetimes(ours, theirs, cdnow):
    """At x = t_x = T = 0 the conditional pmf is the new customer's, FHL 2005 eq. 8."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = theirs().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])
        expected = [ref.probability_of_n_purchases_up_to_time(100.0, n) for n in range(6)]
    dist = forecast.purchase_distribution(ours.from_params(dict(ref.params_)), 100.0, 0, 0, 0)
    got = np.diff([0.0, *[dist.cdf(k)[0] for k in range(6)]])
    np.testing.assert_allclose(got, expected, rtol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MODELS), st.floats(0.05, 5), st.floats(1, 300), st.floats(0.1, 5),
       st.floats(1, 300), rfm_rows(max_x=60), st.floats(1, 730))
def test_pmf_is_a_distribution_with_the_models_mean(cls, r, alpha, shape, scale, row, t):
    names = cls.param_names
    params = dict(zip(names, (r, alpha, shape, scale), strict=True))
    if cls is not ParetoNBDModel and abs(params["a"] - 1) < 1e-3:
        return
    model = cls.from_params(params)
    x, t_x, big_t = row
    dist = forecast.purchase_distribution(model, t, x, t_x, big_t)
    total = dist.cdf(10**7)[0]
    assert total == pytest.approx(1.0, abs=2e-7)
    mean = model.conditional_expected_purchases(t, x, t_x, big_t)
    assert dist.mean()[0] == pytest.approx(float(np.ravel(mean)[0]), rel=1e-4, abs=1e-4)
    lo, hi = dist.quantiles()[0]
    assert 0 <= lo <= hi
    assert dist.cdf(hi)[0] >= 0.9 * (1 - 1e-12) and (hi == 0 or dist.cdf(hi - 1)[0] < 0.9)


def _exact_spend_factor(one: forecast.PurchaseDistribution, p: float, q: float,
                        level: float) -> float:
    """A one-row distribution's spend quantile by root-finding on the exact CDF (0 if P(0) is
    already at the level)."""
    if one.cdf(0)[0] >= level:
        return 0.0
    return brentq(lambda w: forecast.spend_cdf(one, p, q, w)[0] - level, 1e-300, 1e9,
                  xtol=1e-300, rtol=1e-13)


def test_spend_quantiles_equal_root_finding_on_the_exact_cdf(cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    model = ParetoNBDModel().fit(x, t_x, big_t)
    p, q = 6.25, 3.74
    dist = forecast.purchase_distribution(model, 365.0, x, t_x, big_t)
    factors = forecast.spend_factor_quantiles(dist, p, q)
    rng = np.random.default_rng(3)
    checked = 0
    for i in rng.choice(x.size, 40, replace=False):
        one = forecast.purchase_distribution(model, 365.0, x[i], t_x[i], big_t[i])
        for j, level in enumerate(forecast.LEVELS):
            exact = _exact_spend_factor(one, p, q, level)
            assert factors[i, j] == pytest.approx(exact, rel=1e-3)
            checked += exact > 0
    assert checked > 20


def _simulate(cls, params, spend, n, t, rng):
    """Customers of a known process: calibration RFM, holdout purchases and spend."""
    big_t = rng.uniform(0, 300, n)
    lam = rng.gamma(params["r"], 1 / params["alpha"], n)
    if cls is ParetoNBDModel:
        death = rng.exponential(1 / rng.gamma(params["s"], 1 / params["beta"], n))
        drop = None
    else:
        death = np.full(n, np.inf)
        drop = rng.beta(params["a"], params["b"], n)
        if cls is ModifiedBetaGeoModel:  # may drop right after the first purchase
            death[rng.random(n) < drop] = 0.0
    p, q, gamma = spend
    nu = rng.gamma(q, 1 / gamma, n)
    x, t_x, y, total, amount_sum = (np.zeros(n) for _ in range(5))
    clock = np.zeros(n)
    alive = death > 0
    while np.any(alive):
        clock = np.where(alive, clock + rng.exponential(1 / lam), clock)
        alive &= (clock < death) & (clock < big_t + t)
        amount = rng.gamma(p, 1 / nu)
        in_cal, in_hold = alive & (clock <= big_t), alive & (clock > big_t)
        x += in_cal
        t_x = np.where(in_cal, clock, t_x)
        amount_sum += np.where(in_cal, amount, 0.0)
        y += in_hold
        total += np.where(in_hold, amount, 0.0)
        if drop is not None:
            gone = alive & (rng.random(n) < drop)
            death = np.where(gone, clock, death)
            alive &= ~gone
    monetary = np.where(x > 0, amount_sum / np.maximum(x, 1), 0.0)
    return x, t_x, big_t, monetary, y, total


@pytest.mark.parametrize("cls, params", [
    (ParetoNBDModel, {"r": 0.55, "alpha": 10.0, "s": 0.6, "beta": 40.0}),
    (ModifiedBetaGeoModel, {"r": 0.8, "alpha": 20.0, "a": 0.9, "b": 3.0}),
    (BetaGeoModel, {"r": 0.8, "alpha": 20.0, "a": 0.9, "b": 3.0}),
])
def test_intervals_are_calibrated_on_customers_of_a_known_process(cls, params):
    """With the true parameters, the randomized PIT of purchases and spend is uniform and the
    80% intervals cover at least 80% (discrete quantiles cover at least their level)."""
    rng = np.random.default_rng(19)
    t, spend = 180.0, (6.0, 4.0, 15.0)
    x, t_x, big_t, m, y, total = _simulate(cls, params, spend, 30_000, t, rng)
    dist = forecast.purchase_distribution(cls.from_params(params), t, x, t_x, big_t)
    f_at, f_below = dist.cdf(y), dist.cdf(y - 1)
    pit = f_below + rng.random(y.size) * (f_at - f_below)
    shares = np.histogram(pit, bins=10, range=(0, 1))[0] / y.size
    assert np.all(np.abs(shares - 0.1) < 0.012), shares  # sd of a share here: 0.0017
    lo, hi = dist.quantiles().T
    covered = (y >= lo) & (y <= hi)
    assert 0.80 <= covered.mean() <= 0.97
    p, q, gamma = spend
    scale = gamma + x * m
    s_at = forecast.spend_cdf(dist, p, q, total / scale)
    s_pit = np.where(total > 0, s_at, rng.random(y.size) * dist.cdf(0))
    s_shares = np.histogram(s_pit, bins=10, range=(0, 1))[0] / y.size
    assert np.all(np.abs(s_shares - 0.1) < 0.012), s_shares
    factor = forecast.spend_factor_quantiles(dist, p, q)
    s_covered = (total >= factor[:, 0] * scale - 1e-9) & (total <= factor[:, 1] * scale + 1e-9)
    assert 0.80 <= s_covered.mean() <= 0.97


def test_intervals_fail_when_the_parameters_are_wrong():
    """The calibration check above can fail: with the prior's purchase rate a quarter of the
    truth, the PIT piles up in the top tenth."""
    rng = np.random.default_rng(7)
    params = {"r": 0.55, "alpha": 10.0, "s": 0.6, "beta": 40.0}
    x, t_x, big_t, _m, y, _total = _simulate(ParetoNBDModel, params, (6.0, 4.0, 15.0), 20_000,
                                             180.0, rng)
    wrong = ParetoNBDModel.from_params({**params, "alpha": 40.0})
    dist = forecast.purchase_distribution(wrong, 180.0, x, t_x, big_t)
    pit = dist.cdf(y - 1) + rng.random(y.size) * (dist.cdf(y) - dist.cdf(y - 1))
    shares = np.histogram(pit, bins=10, range=(0, 1))[0] / y.size
    assert shares[-1] > 0.12 and np.any(np.abs(shares - 0.1) >= 0.012), shares


def test_alive_notes_name_the_two_cases():
    p_alive = np.array([1.0, 1.0, 0.95, 0.95, 0.5])
    freq = np.array([0, 0, 3, 3, 0])
    churn = np.array([0.97, 0.2, 0.9, 0.3, 0.95])
    bg = alive_notes(p_alive, freq, churn, high_risk=0.8, one_time_buyers_assumed_alive=True)
    assert [ALIVE_NOTES[c] if c >= 0 else None for c in bg] == [
        "not_estimated", "not_estimated", "infrequent_buyer", None, "not_estimated"]
    other = alive_notes(p_alive, freq, churn, high_risk=0.8, one_time_buyers_assumed_alive=False)
    assert [ALIVE_NOTES[c] if c >= 0 else None for c in other] == [
        "infrequent_buyer", None, "infrequent_buyer", None, None]


@pytest.mark.parametrize("x, t", [(700.0, 365.0), (500.0, 3650.0), (2000.0, 90.0)])
def test_heavy_buyers_get_a_true_distribution(x, t):
    """A Pareto/NBD heavy buyer's pmf is all in logs: C_k alone overflows past k ~ 550 (the
    review found NaN here, then intervals of the wrong customer)."""
    model = ParetoNBDModel.from_params({"r": 0.55, "alpha": 74.0, "s": 0.61, "beta": 82.0})
    dist = forecast.purchase_distribution(model, t, x, 729.0, 730.0)
    assert dist.cdf(10**7)[0] == pytest.approx(1.0, abs=2e-7)
    assert dist.mean()[0] == pytest.approx(
        float(model.conditional_expected_purchases(t, x, 729.0, 730.0)), rel=1e-6)
    lo, hi = dist.quantiles()[0]
    assert dist.cdf(lo)[0] >= 0.1 and (lo == 0 or dist.cdf(lo - 1)[0] < 0.1)
    assert dist.cdf(hi)[0] >= 0.9 and dist.cdf(hi - 1)[0] < 0.9
    factors = forecast.spend_factor_quantiles(dist, 6.25, 3.74)[0]
    for j, level in enumerate(forecast.LEVELS):
        assert factors[j] == pytest.approx(_exact_spend_factor(dist, 6.25, 3.74, level),
                                           rel=1e-4)


@pytest.mark.parametrize("p, q", [(0.3, 2.0), (1.0, 1.5), (6.25, 3.74), (20.0, 8.0)])
def test_spend_quantiles_are_accurate_for_any_shape(p, q):
    model = BetaGeoModel.from_params({"r": 0.8, "alpha": 20.0, "a": 0.9, "b": 3.0})
    x = np.array([0.0, 1.0, 3.0, 12.0, 40.0])
    t_x = np.array([0.0, 50.0, 200.0, 300.0, 330.0])
    dist = forecast.purchase_distribution(model, 365.0, x, t_x, np.full(5, 340.0))
    factors = forecast.spend_factor_quantiles(dist, p, q)
    for i in range(x.size):
        one = forecast.purchase_distribution(model, 365.0, x[i], t_x[i], 340.0)
        for j, level in enumerate(forecast.LEVELS):
            assert factors[i, j] == pytest.approx(_exact_spend_factor(one, p, q, level),
                                                  rel=1e-4), (i, j)


def test_streamed_intervals_equal_the_whole_distributions(cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    model = ParetoNBDModel().fit(x, t_x, big_t)
    dist = forecast.purchase_distribution(model, 365.0, x, t_x, big_t)
    counts, factors = forecast.intervals(model, 365.0, x, t_x, big_t, 6.25, 3.74,
                                         rows_per_pass=300)
    np.testing.assert_array_equal(counts, dist.quantiles())
    np.testing.assert_allclose(factors, forecast.spend_factor_quantiles(dist, 6.25, 3.74),
                               rtol=1e-12)


def test_spend_intervals_refuse_shapes_they_cannot_compute():
    model = BetaGeoModel.from_params({"r": 0.8, "alpha": 20.0, "a": 0.9, "b": 3.0})
    with pytest.raises(ValueError, match="Gamma-Gamma"):
        forecast.intervals(model, 365.0, 0, 0, 100, 6.0, float("nan"))


def test_recalibration_keeps_a_calibrated_model_and_corrects_a_wrong_one():
    """Levels learned from a backtest's PIT: about nominal when the model is the truth, moved
    out when the model under-predicts (its top tail too light)."""
    rng = np.random.default_rng(11)
    params = {"r": 0.55, "alpha": 10.0, "s": 0.6, "beta": 40.0}
    x, t_x, big_t, _m, y, _total = _simulate(ParetoNBDModel, params, (6.0, 4.0, 15.0), 30_000,
                                             90.0, rng)
    right = forecast.recalibrate(ParetoNBDModel.from_params(params), 90.0, x, t_x, big_t, y)
    assert right.levels == pytest.approx((0.1, 0.9), abs=0.01)
    assert right.customers == 30_000 and sum(right.pit) == pytest.approx(1.0)
    wrong = ParetoNBDModel.from_params({**params, "alpha": 40.0})  # a quarter of the rate
    moved = forecast.recalibrate(wrong, 90.0, x, t_x, big_t, y)
    assert moved.levels[1] > 0.92 and moved.pit[-1] > 0.11
    # at the moved level, the wrong model's intervals cover about as the right one's do
    dist = forecast.purchase_distribution(wrong, 90.0, x, t_x, big_t)
    lo, hi = dist.quantiles(moved.levels).T
    truth = forecast.purchase_distribution(ParetoNBDModel.from_params(params), 90.0, x, t_x,
                                           big_t)
    tlo, thi = truth.quantiles().T
    assert abs(np.mean((y >= lo) & (y <= hi)) - np.mean((y >= tlo) & (y <= thi))) < 0.02
    assert forecast.recalibrate(wrong, 90.0, x, t_x, big_t, y, max_customers=5000).customers \
        == 5000


def test_stored_levels_fall_back_to_nominal():
    assert forecast.stored_levels(None) == forecast.LEVELS
    assert forecast.stored_levels({"calibrated_levels": None}) == forecast.LEVELS
    assert forecast.stored_levels({"calibrated_levels": [0.11, 0.93]}) == (0.11, 0.93)
    assert forecast.stored_levels({"calibrated_levels": [0.11, 1.5]}) == forecast.LEVELS
