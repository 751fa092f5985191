"""The MBG/NBD purchase model (Batislam, Denizel & Filiztekin 2007).

BG/NBD with one change: a customer may also drop out right after their *first* purchase, not
only after each repeat purchase. While active, a customer buys at Poisson rate
lambda ~ Gamma(r, alpha); after every purchase, the first included, they drop out with
probability p ~ Beta(a, b). So a customer without a repeat purchase is no longer certain to be
alive (in BG/NBD their P(alive) is 1 however long they have been quiet), which matters in
e-commerce bases where one-time buyers are the majority.

With x repeat purchases, the last at t_x, and observation to T, the individual likelihood is
(Batislam et al. 2007, eq. 4; in the form of Wagner & Hoppe 2008, appendix)

    L = B(a, b+x+1)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+T)^(r+x))
      + B(a+1, b+x)/B(a, b) * G(r+x) alpha^r / (G(r) (alpha+t_x)^(r+x))

(alive at T, or dropped out right after the purchase at t_x), hence

    P(alive | x, t_x, T) = 1 / (1 + a/(b+x) ((alpha+T)/(alpha+t_x))^(r+x))

and, given alive, lambda ~ Gamma(r+x, alpha+T) and p ~ Beta(a, b+x+1): BG/NBD's conditional
expressions with b + 1 in the posterior (``BetaGeoModel._b_offset``).

References
----------
Batislam, E. P., Denizel, M. and Filiztekin, A. (2007). "Empirical validation and comparison of
models for customer base analysis". International Journal of Research in Marketing 24(3),
201-209.
Wagner, U. and Hoppe, D. (2008). "Erratum on the MBG/NBD Model". International Journal of
Research in Marketing 25(3), 225-226.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betaln, digamma, gammaln, hyp2f1

from models.beta_geo import _A_NEAR_ONE, BetaGeoModel
from models.rfm import RFMHistogram, check_rfm


def _log_likelihood_terms(params: NDArray[np.float64], x: NDArray[np.float64],
                          t_x: NDArray[np.float64], big_t: NDArray[np.float64]):
    """Per-row log-likelihood (module docstring) and its gradient w.r.t. (r, alpha, a, b).

    log L = c1 + c2 - (r+x) log(alpha+T) + log(1 + e^d), with
    c1 = log G(r+x) - log G(r) + r log alpha, c2 = log B(a, b+x+1) - log B(a, b) and
    d = log a - log(b+x) + (r+x) (log(alpha+T) - log(alpha+t_x)) (the second term over the
    first). With w = e^d / (1 + e^d), the derivatives follow term by term.
    """
    r, alpha, a, b = params
    ux, idx = np.unique(x, return_inverse=True)  # special functions once per distinct x
    idx = idx.reshape(x.shape)
    log_at, log_atx = np.log(alpha + big_t), np.log(alpha + t_x)
    c1 = (gammaln(r + ux) - gammaln(r))[idx] + r * np.log(alpha)
    c2 = (betaln(a, b + ux + 1) - betaln(a, b))[idx]
    d = np.log(a) - np.log(b + x) + (r + x) * (log_at - log_atx)
    ll = c1 + c2 - (r + x) * log_at + np.logaddexp(0.0, d)
    w = np.exp(-np.logaddexp(0.0, -d))  # e^d / (1 + e^d), without overflow
    d_r = ((digamma(r + ux) - digamma(r))[idx] + np.log(alpha) - log_at
           + w * (log_at - log_atx))
    d_alpha = r / alpha - (r + x) / (alpha + big_t) + w * (r + x) * (
        1 / (alpha + big_t) - 1 / (alpha + t_x))
    d_c2_a = (digamma(a + b) - digamma(a + b + ux + 1))[idx]
    d_a = d_c2_a + w / a
    d_b = d_c2_a + (digamma(b + ux + 1) - digamma(b))[idx] - w / (b + x)
    return ll, np.stack([d_r, d_alpha, d_a, d_b])


class ModifiedBetaGeoModel(BetaGeoModel):
    """MBG/NBD model with scikit-learn conventions: ``fit`` returns self; ``params_`` etc.

    The parameters are BG/NBD's (r, alpha, a, b); only the dropout at the first purchase
    differs, so the conditional predictions reuse BG/NBD's code with the posterior's b shifted
    by one.
    """

    label = "MBG/NBD"
    _likelihood = staticmethod(_log_likelihood_terms)
    _b_offset = 1.0
    one_time_buyers_assumed_alive = False

    def _default_start(self, hist: RFMHistogram) -> list[float]:
        return [1.0, max(float(np.mean(hist.T)), 1e-9), 1.0, 1.0]

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike,
                          T: ArrayLike) -> NDArray[np.float64]:  # noqa: N803
        """P(alive | x, t_x, T) = 1 / (1 + a/(b+x) ((alpha+T)/(alpha+t_x))^(r+x)).

        Batislam et al. (2007), eq. 5; below 1 for one-time buyers too (t_x = 0).
        """
        r, alpha, a, b = self._params()
        x, t_x, big_t = check_rfm(frequency, recency, T)
        log_ratio = np.log(a) - np.log(b + x) + (r + x) * (np.log(alpha + big_t)
                                                           - np.log(alpha + t_x))
        return np.exp(-np.logaddexp(0.0, log_ratio))

    def expected_purchases_new_customer(self, t: ArrayLike) -> NDArray[np.float64]:
        """E[X(t)] for a customer just acquired (Batislam et al. 2007, eq. 7).

        The customer survives the flip after their first purchase with probability
        b/(a+b); then p ~ Beta(a, b+1) and BG/NBD's eq. 7 applies with b + 1:
        E[X(t)] = b/(a-1) (1 - (alpha/(alpha+t))^r 2F1(r, b+1; a+b; t/(alpha+t))).
        """
        r, alpha, a, b = self._params()
        if abs(a - 1) < _A_NEAR_ONE:
            return self._either_side_of_a_one("expected_purchases_new_customer", t)
        t = np.asarray(t, dtype=np.float64)
        z = t / (alpha + t)
        return b / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b + 1, a + b, z))
