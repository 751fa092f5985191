"""The BG/NBD purchase model (Fader, Hardie & Lee 2005).

While active, a customer buys at Poisson rate lambda ~ Gamma(r, alpha); after each purchase they
drop out with probability p ~ Beta(a, b). Time is in whatever unit the inputs use (the service
uses days).

References
----------
Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2005). "Counting Your Customers the Easy Way:
An Alternative to the Pareto/NBD Model". Marketing Science 24(2), 275-284.
Fader, P. S., Hardie, B. G. S. and Lee, K. L. (2008). "Computing P(alive) Using the BG/NBD
Model". http://brucehardie.com/notes/021/
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import eigh_tridiagonal
from scipy.special import betaln, digamma, gammaln, hyp2f1

from models._fitting import PurchaseMLEModel
from models.rfm import RFMHistogram, check_rfm

PARAM_NAMES = ("r", "alpha", "a", "b")
_A_NEAR_ONE = 1e-4
_SERIES_LIMIT = 200.0


def _log_likelihood_terms(params: NDArray[np.float64], x: NDArray[np.float64],
                          t_x: NDArray[np.float64], big_t: NDArray[np.float64]):
    """Per-row log-likelihood (FHL 2005, eq. 6) and its gradient w.r.t. (r, alpha, a, b)."""
    r, alpha, a, b = params
    # eq. 6: L = B(a, b+x)/B(a, b) * G(r+x) a^r / (G(r) (alpha+T)^(r+x))
    #          + [x > 0] B(a+1, b+x-1)/B(a, b) * G(r+x) a^r / (G(r) (alpha+t_x)^(r+x))
    # The special functions depend on x alone, evaluated per distinct x.
    ux, idx = np.unique(x, return_inverse=True)
    idx = idx.reshape(x.shape)
    a1 = (gammaln(r + ux) - gammaln(r))[idx] + r * np.log(alpha)
    a2 = (betaln(a, b + ux) - betaln(a, b))[idx]
    a3 = -(r + x) * np.log(alpha + big_t)
    repeat = x > 0
    bx1 = np.where(repeat, np.maximum(b + x - 1, 1e-300), 1.0)  # b can underflow in a line search
    a4 = np.where(repeat, np.log(a) - np.log(bx1) - (r + x) * np.log(alpha + t_x), -np.inf)
    top = np.maximum(a3, a4)
    e3, e4 = np.exp(a3 - top), np.exp(a4 - top)
    ll = a1 + a2 + top + np.log(e3 + e4)
    w3, w4 = e3 / (e3 + e4), e4 / (e3 + e4)
    d_r = ((digamma(r + ux) - digamma(r))[idx] + np.log(alpha)
           - w3 * np.log(alpha + big_t) - w4 * np.log(alpha + t_x))
    d_alpha = r / alpha - w3 * (r + x) / (alpha + big_t) - w4 * (r + x) / (alpha + t_x)
    d_a2_a = (digamma(a + b) - digamma(a + b + ux))[idx]
    d_a = d_a2_a + w4 / a
    d_b = d_a2_a + (digamma(b + ux) - digamma(b))[idx] - w4 / bx1
    return ll, np.stack([d_r, d_alpha, d_a, d_b])


class BetaGeoModel(PurchaseMLEModel):
    """BG/NBD model with scikit-learn conventions: ``fit`` returns self; ``params_`` etc.

    Parameters
    ----------
    penalizer : float
        L2 penalty on the parameters, added to the negative log-likelihood (as lifetimes
        does); 0 gives the plain maximum-likelihood estimate.
    """

    param_names = PARAM_NAMES

    label = "BG/NBD"
    _likelihood = staticmethod(_log_likelihood_terms)
    # Given alive at T with x repeat purchases, p ~ Beta(a, b + x + _b_offset) a posteriori:
    # BG/NBD has survived x coin flips (one after each repeat purchase); MBG/NBD one more, the
    # flip right after the first purchase.
    _b_offset = 0.0
    # BG/NBD's P(alive) is 1 for every customer without a repeat purchase, by assumption.
    one_time_buyers_assumed_alive = True

    def _default_start(self, hist: RFMHistogram) -> list[float]:
        return [1.0, max(float(np.mean(hist.T)), 1e-9), 1.0, 1.0]

    def _params(self) -> tuple[float, float, float, float]:
        r, alpha, a, b = self._fitted()
        return float(r), float(alpha), float(a), float(b)

    # -- prediction -----------------------------------------------------------------------------

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike,
                          T: ArrayLike) -> NDArray[np.float64]:  # noqa: N803
        """P(alive | x, t_x, T) (FHL 2008, eq. 1); 1 for customers without repeat purchases."""
        r, alpha, a, b = self._params()
        x, t_x, big_t = check_rfm(frequency, recency, T)
        repeat = x > 0
        bx1 = np.where(repeat, b + x - 1, 1.0)
        # 1 / (1 + [x>0] a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)), in logs to avoid overflow
        log_ratio = np.log(a) - np.log(bx1) + (r + x) * (np.log(alpha + big_t)
                                                         - np.log(alpha + t_x))
        return np.where(repeat, np.exp(-np.logaddexp(0.0, log_ratio)), 1.0)

    def median_time_to_next_purchase(self, frequency: ArrayLike, recency: ArrayLike,
                                     T: ArrayLike) -> NDArray[np.float64]:  # noqa: N803
        """Median time from T to the next purchase of a customer who is still alive.

        While alive, purchases are Poisson with rate lambda ~ Gamma(r+x, alpha+T) a posteriori,
        so P(no purchase within t) = ((alpha+T)/(alpha+T+t))^(r+x); setting it to 1/2 gives
        t = (alpha+T) (2^(1/(r+x)) - 1).
        """
        r, alpha, _a, _b = self._params()
        x, _t_x, big_t = check_rfm(frequency, recency, T)
        return (alpha + big_t) * np.expm1(np.log(2.0) / (r + x))

    def probability_no_purchases(self, t: ArrayLike, frequency: ArrayLike, recency: ArrayLike,
                                 T: ArrayLike) -> NDArray[np.float64]:  # noqa: N803
        """P(no purchase in (T, T+t] | x, t_x, T): the BTYD churn probability over t.

        A BG/NBD customer drops out only right after a purchase, so one who is alive at T
        makes no purchase in t with probability E[exp(-lambda t)] under the posterior
        lambda ~ Gamma(r+x, alpha+T), i.e. ((alpha+T)/(alpha+T+t))^(r+x); a customer who has
        dropped out makes none. Hence 1 - P(alive) + P(alive) ((alpha+T)/(alpha+T+t))^(r+x).
        """
        r, alpha, _a, _b = self._params()
        t = np.asarray(t, dtype=np.float64)
        x, t_x, big_t = check_rfm(frequency, recency, T)
        alive = self.probability_alive(x, t_x, big_t)
        quiet = np.exp(-(r + x) * np.log1p(t / (alpha + big_t)))
        return 1.0 - alive * (1.0 - quiet)

    def _either_side_of_a_one(self, method: str, *args: ArrayLike) -> NDArray[np.float64]:
        """``method`` evaluated at a = 1 -/+ 2e-4 and averaged.

        The closed forms (FHL 2005, eqs. 7 and 10, and MBG/NBD's) are 0/0 at a = 1, where the
        functions themselves are smooth.
        """
        lo, hi = (self.from_params({**self.params_, "a": 1 + 2 * s * _A_NEAR_ONE})
                  for s in (-1, 1))
        return (getattr(lo, method)(*args) + getattr(hi, method)(*args)) / 2

    def purchase_pmf_if_alive(self, t: float, frequency: NDArray[np.float64],
                              T: NDArray[np.float64], k_max: int) -> NDArray[np.float64]:  # noqa: N803
        """P(Y(t) = k | alive at T, x), k = 0..k_max, one row per customer (rows x k_max+1).

        Given alive at T, lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x+offset) a
        posteriori. With N(t) ~ Poisson(lambda t) the purchases of an immortal customer, a live
        customer makes k >= 1 purchases if they survive the first k-1 flips and then either
        drop out after the k-th purchase or survive it with N(t) = k exactly (the argument of
        FHL 2005, eq. 8, started at T):

            P(Y = 0) = NB(0),
            P(Y = k) = E[(1-p)^k] NB(k) + E[p (1-p)^(k-1)] P(N >= k),   k >= 1,

        NB the negative binomial pmf of N(t) after integrating over lambda, and
        E[(1-p)^k] = B(a, b'+k)/B(a, b'), E[p (1-p)^(k-1)] = B(a+1, b'+k-1)/B(a, b'),
        b' = b+x+offset. Every factor is built by its ratio recurrence in k (logs of ratios,
        no special function per k), so the cost is a few array operations per k.
        """
        r, alpha, a, b = self._params()
        x = np.asarray(frequency, dtype=np.float64)[:, None]
        big_t = np.asarray(T, dtype=np.float64)[:, None]
        k = np.arange(1, k_max + 1, dtype=np.float64)[None, :]
        rp, b_post = r + x, b + self._b_offset + x
        log_pi = -np.log1p(t / (alpha + big_t))          # log P(no purchase in t | lambda)
        log_rho = np.log(t) - np.log(alpha + big_t + t) if t > 0 else -np.inf
        # log NB(k) = rp log(pi) + sum_{j<=k} log((rp+j-1)/j) + k log(rho)
        log_nb = np.concatenate([rp * log_pi, rp * log_pi + np.cumsum(
            np.log((rp + k - 1) / k) + log_rho, axis=1)], axis=1)
        nb = np.exp(log_nb)
        survive = np.clip(1.0 - np.cumsum(nb, axis=1)[:, :-1], 0.0, 1.0)  # P(N >= k), k >= 1
        # E[(1-p)^k] = prod_{j<=k} (b'+j-1)/(a+b'+j-1),
        # E[p(1-p)^(k-1)] = a/(a+b'+k-1) E[(1-p)^(k-1)]
        log_keep = np.cumsum(np.log((b_post + k - 1) / (a + b_post + k - 1)), axis=1)
        keep_before = np.exp(np.concatenate([np.zeros_like(x), log_keep[:, :-1]], axis=1))
        out = np.empty((x.shape[0], k_max + 1))
        out[:, 0] = nb[:, 0]
        out[:, 1:] = np.exp(log_keep) * nb[:, 1:] + a / (a + b_post + k - 1) * keep_before \
            * survive
        return out

    def expected_purchases_new_customer(self, t: ArrayLike) -> NDArray[np.float64]:
        """E[X(t)] for a customer just acquired (FHL 2005, eq. 7)."""
        r, alpha, a, b = self._params()
        if abs(a - 1) < _A_NEAR_ONE:
            return self._either_side_of_a_one("expected_purchases_new_customer", t)
        t = np.asarray(t, dtype=np.float64)
        z = t / (alpha + t)
        return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r
                                        * hyp2f1(r, b, a + b - 1, z))

    def conditional_expected_purchases(self, t: ArrayLike, frequency: ArrayLike,
                                       recency: ArrayLike,
                                       T: ArrayLike) -> NDArray[np.float64]:  # noqa: N803
        """E[Y(t) | x, t_x, T]: expected purchases in the next ``t`` (FHL 2005, eq. 10).

        Written as P(alive) times E[Y(t) | alive], the latter with the posterior
        p ~ Beta(a, b + x + offset) (offset 0 here, 1 for MBG/NBD: Batislam et al. 2007, eq. 8).
        """
        r, alpha, a, b = self._params()
        x, t_x, big_t = check_rfm(frequency, recency, T)
        t = np.asarray(t, dtype=np.float64)
        if np.any(t < 0):
            raise ValueError("horizon t must be non-negative")
        t, x, t_x, big_t = np.broadcast_arrays(t, x, t_x, big_t)
        if abs(a - 1) < _A_NEAR_ONE:
            return self._either_side_of_a_one("conditional_expected_purchases", t, x, t_x, big_t)
        b_post = b + self._b_offset
        c = a + b_post + x - 1
        z = t / (alpha + big_t + t)
        with np.errstate(all="ignore"):
            log_hyp = _log_hyp2f1(r + x, b_post + x, c, z)
            # 1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1; z)
            log_tail = log_hyp + (r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + t))
            second = -np.expm1(log_tail)
            alive_mean = c / (a - 1) * second
        # The series loses accuracy when both upper parameters are large (scipy's hyp2f1 can
        # be far off while finite, e.g. r+x = 685, b+x = 1044); the factor `second` must lie in
        # [0, 1] in any case. A large b alone (no dropout in the data) is well-conditioned.
        bad = (~np.isfinite(alive_mean) | (c <= 0) | (alive_mean < 0)
               | ((a > 1) & (second > 1)) | (r + x > _SERIES_LIMIT))
        if np.any(bad):
            alive_mean = np.where(bad, 0.0, alive_mean)
            alive_mean[bad] = _alive_mean_by_quadrature(r, alpha, a, b_post, t[bad], x[bad],
                                                        big_t[bad])
        return alive_mean * self.probability_alive(x, t_x, big_t)


def _log_hyp2f1(a: NDArray[np.float64], b: NDArray[np.float64], c: NDArray[np.float64],
                z: NDArray[np.float64]) -> NDArray[np.float64]:
    """Natural log of 2F1(a, b; c; z) for 0 <= z < 1.

    Where the direct series overflows, Euler's transformation is used:
    2F1(a, b; c; z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z) (Abramowitz & Stegun 15.3.3).
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        direct = np.log(hyp2f1(a, b, c, z))
        bad = ~np.isfinite(direct)
        if np.any(bad):
            euler = np.log(hyp2f1(c - a, c - b, c, z)) + (c - a - b) * np.log1p(-z)
            direct = np.where(bad, euler, direct)
    return direct


def _alive_mean_by_quadrature(r: float, alpha: float, a: float, b: float,
                              t: NDArray[np.float64], x: NDArray[np.float64],
                              big_t: NDArray[np.float64]) -> NDArray[np.float64]:
    """E[Y(t) | alive, x, T] where the closed form (eq. 10) is not reliable.

    Given alive at T, lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x) a posteriori, and an
    active customer makes (1 - exp(-lambda p t)) / p purchases in expectation (FHL 2005, eq. 8),
    so E[Y(t) | alive] = E_p[(1 - ((alpha+T)/(alpha+T+p t))^(r+x)) / p]. The integral over the
    Beta posterior uses Gauss-Legendre nodes in s with p = p_hi s^(1/a), which absorbs the
    p^(a-1) end-point singularity; p_hi is the posterior's 1 - 1e-13 quantile. Both the
    integrand and the weights are bounded, so this stays accurate where the hypergeometric
    series overflows or loses precision (a + b + x <= 1, very large x or b).
    """
    out = np.empty_like(t)
    for xv in np.unique(x):
        p, w = _beta_quadrature(a, b + xv)
        rows = np.flatnonzero(x == xv)
        for chunk in np.array_split(rows, max(1, rows.size // 20_000)):  # bounded memory
            ts, ts_t = big_t[chunk][:, None], t[chunk][:, None]
            log_keep = (r + xv) * (np.log(alpha + ts) - np.log(alpha + ts + p * ts_t))
            out[chunk] = (-np.expm1(log_keep) / p) @ w
    return out


@lru_cache(maxsize=4096)
def _beta_quadrature(a: float, beta_: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Nodes in (0, 1) and normalised weights integrating against the Beta(a, beta_) density.

    Gauss-Jacobi: the Beta density is the Jacobi weight (1-u)^(beta_-1) (1+u)^(a-1) on [-1, 1]
    with p = (1+u)/2, so end-point singularities are integrated exactly. Nodes and weights come
    from the eigen-decomposition of the Jacobi matrix (Golub & Welsch 1969): the weights are the
    squared first components of the eigenvectors, already normalised, so nothing overflows for
    large beta_ (scipy's roots_jacobi scales them by 2^(a+beta_) B(a, beta_)).
    """
    n = _JACOBI_NODES
    al, be = beta_ - 1.0, a - 1.0  # Jacobi alpha (at u = 1, p = 1) and beta (at u = -1, p = 0)
    k = np.arange(n, dtype=np.float64)
    s2 = 2 * k + al + be
    with np.errstate(divide="ignore", invalid="ignore"):
        diag = (be ** 2 - al ** 2) / (s2 * (s2 + 2))
    diag[0] = (be - al) / (al + be + 2)
    j = k[1:]
    t = 2 * j + al + be
    off = np.sqrt(4 * j * (j + al) * (j + be) * (j + al + be) / (t ** 2 * (t + 1) * (t - 1)))
    nodes, vectors = eigh_tridiagonal(diag, off)
    weights = vectors[0, :] ** 2
    return (nodes + 1) / 2, weights / weights.sum()


_JACOBI_NODES = 256


