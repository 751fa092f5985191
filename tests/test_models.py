"""BG/NBD, Gamma-Gamma and CLV against the published CDNOW results and lifetimes as an oracle."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.beta_geo import BetaGeoModel
from models.clv import customer_lifetime_value
from models.gamma_gamma import GammaGammaModel
from models.rfm import RFMInputError, check_rfm, compress
from tests.cdnow import cdnow_rfm

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lifetimes import BetaGeoFitter, GammaGammaFitter


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.fixture(scope="module")
def cdnow():
    return cdnow_rfm()


@pytest.fixture(scope="module")
def bg_weeks(cdnow):
    return BetaGeoModel().fit(cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7)


@pytest.fixture(scope="module")
def bg_days(cdnow):
    return BetaGeoModel().fit(cdnow["frequency"], cdnow["recency"], cdnow["T"])


@pytest.fixture(scope="module")
def gg(cdnow):
    repeat = cdnow["frequency"] > 0
    return GammaGammaModel().fit(cdnow["frequency"][repeat], cdnow["monetary_value"][repeat])


def oracle_bg(params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = BetaGeoFitter()
        m.params_ = pd.Series(params)
        m.predict = m.conditional_expected_number_of_purchases_up_to_time  # set by fit()
    return m


def test_cdnow_summary_shape(cdnow):
    assert cdnow["frequency"].size == 2357
    assert cdnow["frequency"].sum() == 2457  # repeat occasions in the 39-week calibration


# Fader, Hardie & Lee (2005), Table/section 4; time unit: weeks.
@pytest.mark.parametrize(("name", "published"), [
    ("r", 0.243), ("alpha", 4.414), ("a", 0.793), ("b", 2.426)])
def test_bgnbd_matches_published_cdnow_parameters(bg_weeks, name, published):
    assert bg_weeks.params_[name] == pytest.approx(published, rel=0.005)


def test_bgnbd_log_likelihood_matches_published(bg_weeks):
    assert bg_weeks.log_likelihood_ == pytest.approx(-9582.4, abs=0.1)


def test_bgnbd_in_days_is_the_same_model(bg_weeks, bg_days):
    assert bg_days.params_["alpha"] / 7 == pytest.approx(bg_weeks.params_["alpha"], rel=1e-5)
    for k in ("r", "a", "b"):
        assert bg_days.params_[k] == pytest.approx(bg_weeks.params_[k], rel=1e-5)


def test_bgnbd_standard_errors_are_finite_and_positive(bg_weeks):
    se = bg_weeks.standard_errors_
    assert all(0 < se[k] < bg_weeks.params_[k] for k in se)


# Fader & Hardie (2013): p = 6.25, q = 3.74, gamma = 15.44 on the same calibration data.
@pytest.mark.parametrize(("name", "published"), [("p", 6.25), ("q", 3.74), ("v", 15.44)])
def test_gamma_gamma_matches_published(gg, name, published):
    assert gg.params_[name] == pytest.approx(published, rel=0.005)


def test_bgnbd_predictions_equal_lifetimes_on_cdnow(bg_days, cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    oracle = oracle_bg(bg_days.params_)
    assert rel(bg_days.probability_alive(x, t_x, big_t),
               oracle.conditional_probability_alive(x, t_x, big_t)) < 1e-6
    for t in (1, 30, 90, 365):
        assert rel(bg_days.conditional_expected_purchases(t, x, t_x, big_t),
                   oracle.conditional_expected_number_of_purchases_up_to_time(
                       t, x, t_x, big_t)) < 1e-6
    assert rel(bg_days.expected_purchases_new_customer(273),
               oracle.expected_number_of_purchases_up_to_time(273)) < 1e-6


def test_spend_and_clv_equal_lifetimes_on_cdnow(bg_days, gg, cdnow):
    x, t_x, big_t, m = (cdnow[k] for k in ("frequency", "recency", "T", "monetary_value"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        oracle = GammaGammaFitter()
        oracle.params_ = pd.Series(gg.params_)
        spend_ref = oracle.conditional_expected_average_profit(pd.Series(x), pd.Series(m))
        clv_ref = oracle.customer_lifetime_value(
            oracle_bg(bg_days.params_), pd.Series(x), pd.Series(t_x), pd.Series(big_t),
            pd.Series(m), time=12, discount_rate=0.01, freq="D")
    spend = gg.conditional_expected_spend(x, m)
    assert rel(spend, spend_ref) < 1e-6
    assert rel(customer_lifetime_value(bg_days, x, t_x, big_t, spend), clv_ref) < 1e-6


@st.composite
def rfm_rows(draw, max_x=200, max_t=3650.0):
    big_t = draw(st.floats(0, max_t, allow_nan=False))
    x = draw(st.integers(0, max_x))
    t_x = 0.0 if x == 0 else draw(st.floats(0, big_t, allow_nan=False))
    return float(x), t_x, big_t


params_bg = st.fixed_dictionaries({
    "r": st.floats(0.01, 20), "alpha": st.floats(0.1, 500), "a": st.floats(0.05, 20),
    "b": st.floats(0.05, 20)}).filter(lambda p: abs(p["a"] - 1) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(params_bg, st.lists(rfm_rows(), min_size=1, max_size=20))
def test_bgnbd_predictions_equal_lifetimes_on_random_inputs(params, rows):
    x, t_x, big_t = (np.array(c) for c in zip(*rows, strict=True))
    model = BetaGeoModel.from_params(params)
    oracle = oracle_bg(params)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_alive = oracle.conditional_probability_alive(x, t_x, big_t)
        ref_exp = oracle.conditional_expected_number_of_purchases_up_to_time(30, x, t_x, big_t)
    # Where lifetimes overflows we do not; past r + x = 200 the series is unreliable (see
    # test_large_frequency_uses_quadrature) and both sides are approximations.
    ok = np.isfinite(ref_alive) & np.isfinite(ref_exp) & (params["r"] + x <= 200)
    if ok.any():
        assert rel(model.probability_alive(x, t_x, big_t)[ok], ref_alive[ok]) < 1e-6
        assert rel(model.conditional_expected_purchases(30, x, t_x, big_t)[ok],
                   ref_exp[ok]) < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"r": st.floats(1e-3, 1e3), "alpha": st.floats(1e-3, 1e4),
                              "a": st.floats(1e-3, 1e3), "b": st.floats(1e-3, 1e3)}),
       rfm_rows(max_x=10_000))
def test_bgnbd_predictions_are_finite_and_sane(params, row):
    model = BetaGeoModel.from_params(params)
    x, t_x, big_t = row
    alive = model.probability_alive(x, t_x, big_t)
    assert np.all(np.isfinite(alive)) and np.all((alive >= 0) & (alive <= 1))
    horizons = np.array([0.0, 1.0, 30.0, 90.0, 365.0, 3650.0])
    exp = model.conditional_expected_purchases(horizons, x, t_x, big_t)
    assert np.all(np.isfinite(exp)), exp
    assert np.all(exp >= -1e-9)
    assert np.all(np.diff(exp) >= -1e-9 * np.maximum(1, np.abs(exp[1:])))


def test_edge_rows_recency_equals_t_and_t_zero():
    model = BetaGeoModel.from_params({"r": 0.24, "alpha": 30.9, "a": 0.79, "b": 2.43})
    x, t_x, big_t = np.array([0, 5, 0, 10_000]), np.array([0, 100, 0, 3650]), \
        np.array([0, 100, 3650, 3650])
    assert np.all(np.isfinite(model.conditional_expected_purchases(90, x, t_x, big_t)))
    assert model.probability_alive(5, 100, 100)[()] > 0.5


@pytest.mark.parametrize(("args", "message"), [
    (([1], [5], [3]), "recency must not exceed T"),
    (([0], [2], [3]), "recency must be 0 when frequency is 0"),
    (([-1], [0], [3]), "frequency must be non-negative"),
    (([1.5], [1], [3]), "frequency must be a whole number"),
    (([1], [np.nan], [3]), "recency must be finite"),
    (([1, 2], [1], [3, 4, 5]), "different lengths"),
])
def test_rfm_validation_errors(args, message):
    with pytest.raises(RFMInputError, match=message):
        check_rfm(*args)
    with pytest.raises(RFMInputError):
        BetaGeoModel().fit(*args)


def test_compression_gives_the_same_fit(cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    hist = compress(x, t_x, big_t)
    assert hist.n_customers == 2357 and hist.frequency.size < 2357
    a = BetaGeoModel().fit(hist).params_
    b = BetaGeoModel().fit(x, t_x, big_t).params_
    assert a == pytest.approx(b, rel=1e-9)


def test_unfitted_models_say_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        BetaGeoModel().probability_alive(1, 1, 2)
    with pytest.raises(RuntimeError, match="not fitted"):
        GammaGammaModel().conditional_expected_spend(1, 2)


def test_gamma_gamma_rejects_non_repeat_buyers():
    with pytest.raises(RFMInputError, match="repeat buyers only"):
        GammaGammaModel().fit([0, 1], [0, 10])


# --- Pareto/NBD ---------------------------------------------------------------------------------

from lifetimes import ParetoNBDFitter  # noqa: E402

from models.pareto_nbd import ParetoNBDModel  # noqa: E402


@pytest.fixture(scope="module")
def pnbd_weeks(cdnow):
    return ParetoNBDModel().fit(cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7)


def oracle_pnbd(params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ParetoNBDFitter()
        m.params_ = pd.Series(params)
    return m


# Fader, Hardie & Lee (2005), Pareto/NBD on the same data, weeks.
@pytest.mark.parametrize(("name", "published"), [
    ("r", 0.553), ("alpha", 10.578), ("s", 0.606), ("beta", 11.669)])
def test_pareto_nbd_matches_published_cdnow_parameters(pnbd_weeks, name, published):
    assert pnbd_weeks.params_[name] == pytest.approx(published, rel=0.005)


def test_pareto_nbd_log_likelihood(pnbd_weeks):
    assert pnbd_weeks.log_likelihood_ == pytest.approx(-9595.0, abs=0.1)


def test_pareto_nbd_predictions_equal_lifetimes_on_cdnow(pnbd_weeks, cdnow):
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7
    oracle = oracle_pnbd(pnbd_weeks.params_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_alive = oracle.conditional_probability_alive(x, t_x, big_t)
        ref_exp = oracle.conditional_expected_number_of_purchases_up_to_time(13, x, t_x, big_t)
    assert rel(pnbd_weeks.probability_alive(x, t_x, big_t), ref_alive) < 1e-6
    assert rel(pnbd_weeks.conditional_expected_purchases(13, x, t_x, big_t), ref_exp) < 1e-6


params_pnbd = st.fixed_dictionaries({
    "r": st.floats(0.05, 10), "alpha": st.floats(0.5, 200), "s": st.floats(0.05, 10),
    "beta": st.floats(0.5, 200)}).filter(lambda p: abs(p["alpha"] - p["beta"]) > 1e-3)


@settings(max_examples=60, deadline=None)
@given(params_pnbd, st.lists(rfm_rows(max_x=60, max_t=730.0), min_size=1, max_size=10))
def test_pareto_nbd_equals_lifetimes_on_random_inputs(params, rows):
    x, t_x, big_t = (np.array(c) for c in zip(*rows, strict=True))
    model = ParetoNBDModel.from_params(params)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = oracle_pnbd(params).conditional_probability_alive(x, t_x, big_t)
    ok = np.isfinite(ref) & (ref > 1e-250)  # lifetimes' 2F1 underflows/overflows out there
    if ok.any():
        assert rel(model.probability_alive(x, t_x, big_t)[ok], ref[ok]) < 1e-6


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({"r": st.floats(1e-3, 1e3), "alpha": st.floats(1e-3, 1e4),
                              "s": st.floats(1e-3, 1e3), "beta": st.floats(1e-3, 1e4)}),
       rfm_rows(max_x=10_000))
def test_pareto_nbd_predictions_are_finite_and_sane(params, row):
    model = ParetoNBDModel.from_params(params)
    x, t_x, big_t = row
    alive = model.probability_alive(x, t_x, big_t)
    assert np.all(np.isfinite(alive)) and np.all((alive >= 0) & (alive <= 1))
    exp = model.conditional_expected_purchases(np.array([0.0, 30.0, 365.0, 3650.0]), x, t_x,
                                               big_t)
    assert np.all(np.isfinite(exp)) and np.all(exp >= 0)
    assert np.all(np.diff(exp) >= -1e-9 * np.maximum(1, np.abs(exp[1:])))


def test_large_frequency_uses_quadrature():
    """scipy's 2F1 is far off here while finite (non-monotone in t); the posterior integral
    gives the sane, saturating answer: about E[1/p] = (a+b+x-1)/(a-1) purchases."""
    model = BetaGeoModel.from_params({"r": 1.0, "alpha": 4.0, "a": 2.0, "b": 360.0})
    exp = model.conditional_expected_purchases(np.array([30.0, 90.0, 365.0, 3650.0]),
                                               684, 0, 0)
    assert np.all(np.diff(exp) >= 0)
    assert exp[-1] == pytest.approx((2 + 360 + 684 - 1) / (2 - 1), rel=0.01)


@pytest.mark.parametrize(("params", "t", "row", "reference"), [
    # References: eq. 10 evaluated with mpmath at 60 digits.
    ((0.2426, 30.895, 0.7929, 2.4259), 365, (1000, 2000, 2000), 168.06995953311747),
    ((0.2426, 30.895, 0.7929, 2.4259), 365, (10000, 3650, 3650), 954.7400839114835),
    ((0.2426, 30.895, 0.3, 0.2), 365, (10000, 3650, 3650), 977.4506257119971),
    ((0.2426, 30.895, 0.05, 100.0), 365, (10000, 3650, 3650), 989.2712821792169),
    ((1.0, 4.0, 2.0, 360.0), 90, (684, 0, 0), 976.7435011165169),
])
def test_heavy_buyers_match_high_precision_references(params, t, row, reference):
    model = BetaGeoModel.from_params(dict(zip(("r", "alpha", "a", "b"), params, strict=True)))
    got = float(model.conditional_expected_purchases(t, *row))
    assert got == pytest.approx(reference, rel=1e-6)


def test_compress_index_spreads_histogram_rows_back_to_customers(cdnow):
    from models.rfm import compress_with_index

    hist, index = compress_with_index(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    np.testing.assert_array_equal(hist.frequency[index], cdnow["frequency"])
    np.testing.assert_array_equal(hist.recency[index], cdnow["recency"])
    np.testing.assert_array_equal(hist.T[index], cdnow["T"])
    np.testing.assert_array_equal(np.bincount(index), hist.weights)


def test_standard_errors_agree_with_lifetimes(bg_weeks, cdnow):
    """lifetimes takes SEs from an autograd Hessian; ours from differences of the gradient."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = BetaGeoFitter().fit(cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7)
    for k in ("r", "alpha", "a", "b"):
        assert bg_weeks.standard_errors_[k] == pytest.approx(ref.standard_errors_[k], rel=0.02)


def test_a_fit_started_at_its_optimum_is_accepted(bg_weeks, cdnow):
    again = BetaGeoModel().fit(cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7,
                               initial=bg_weeks.params_)
    for k in bg_weeks.params_:
        assert again.params_[k] == pytest.approx(bg_weeks.params_[k], rel=1e-6)


def test_probability_of_no_purchases_equals_lifetimes_pareto_nbd(pnbd_weeks, cdnow):
    from lifetimes import ParetoNBDFitter

    ref = ParetoNBDFitter()
    ref.params_ = pd.Series(pnbd_weeks.params_)
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7
    for t in (4.0, 13.0, 52.0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = ref.conditional_probability_of_n_purchases_up_to_time(0, t, x, t_x, big_t)
        ours = pnbd_weeks.probability_no_purchases(t, x, t_x, big_t)
        assert rel(ours, expected) < 1e-6


def test_probability_of_no_purchases_bgnbd(bg_weeks, cdnow):
    """New customers: the unconditional P(X(t) = 0) of lifetimes; otherwise bounded by the
    probability of having dropped out, and decreasing in t."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = BetaGeoFitter()
        ref.params_ = pd.Series(bg_weeks.params_)
        for t in (1.0, 10.0, 52.0):
            assert bg_weeks.probability_no_purchases(t, 0, 0, 0) == pytest.approx(
                ref.probability_of_n_purchases_up_to_time(t, 0), rel=1e-9)
    x, t_x, big_t = cdnow["frequency"], cdnow["recency"] / 7, cdnow["T"] / 7
    p13, p52 = (bg_weeks.probability_no_purchases(t, x, t_x, big_t) for t in (13.0, 52.0))
    assert np.all(p52 <= p13 + 1e-12)
    assert np.all(p13 >= 1 - bg_weeks.probability_alive(x, t_x, big_t) - 1e-12)
    assert np.all((p13 >= 0) & (p13 <= 1))


@pytest.mark.parametrize("params", [
    (0.553, 74.0, 0.606, 81.7), (0.5, 200.0, 0.9, 0.5), (0.5, 200.0, 5.0, 1.0),
    (2.0, 1.0, 2.0, 0.05), (0.1, 1000.0, 3.0, 10.0),
])
@pytest.mark.parametrize("row", [(0, 0, 0), (3, 40, 50), (20, 300, 301)])
def test_pareto_no_purchase_integral_against_adaptive_quadrature(params, row):
    """Including T = 0 and beta + T much shorter than the horizon."""
    from scipy.integrate import quad

    from models.pareto_nbd import ParetoNBDModel

    r, alpha, s, beta = params
    x, t_x, big_t = row
    t = 90.0
    m = ParetoNBDModel.from_params(dict(zip(("r", "alpha", "s", "beta"), params, strict=True)))
    k = r + x

    def g(u):
        return (1 + u / (alpha + big_t)) ** -k

    def f(u):
        return s / (beta + big_t) * (1 + u / (beta + big_t)) ** -(s + 1)

    inner = quad(lambda u: g(u) * f(u), 0, t, epsabs=1e-14, epsrel=1e-12, limit=200)[0]
    quiet = g(t) * (1 + t / (beta + big_t)) ** -s + inner
    alive = m.probability_alive(x, t_x, big_t)
    expected = 1 - alive * (1 - quiet)
    assert m.probability_no_purchases(t, x, t_x, big_t) == pytest.approx(expected, rel=1e-8)


def test_a_fit_without_standard_errors_has_the_same_parameters():
    """The backtest skips the Hessian: same optimum, SEs NaN, and nothing else differs."""
    from models.beta_geo import BetaGeoModel as _BG
    from models.pareto_nbd import ParetoNBDModel as _PN
    from tests.cdnow import cdnow_rfm as _rfm

    d = _rfm()
    for cls in (_BG, _PN):
        full = cls().fit(d["frequency"], d["recency"], d["T"])
        quick = cls().fit(d["frequency"], d["recency"], d["T"], standard_errors=False)
        assert quick.params_ == full.params_
        assert all(np.isnan(v) for v in quick.standard_errors_.values())
        assert all(np.isfinite(v) for v in full.standard_errors_.values())
