"""The Gamma-Gamma model of spend per purchase occasion (Fader & Hardie 2013).

A customer's occasion amounts z ~ Gamma(p, nu) with nu ~ Gamma(q, gamma) across customers; the
model uses each repeat buyer's number of repeat occasions x and their mean amount m. Spend is
assumed independent of the purchase process.

References
----------
Fader, P. S. and Hardie, B. G. S. (2013). "The Gamma-Gamma Model of Monetary Value".
http://www.brucehardie.com/notes/025/
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import digamma, gammaln

from models._fitting import MLEModel, fit_weighted
from models.rfm import RFMInputError

PARAM_NAMES = ("p", "q", "v")


def _check(frequency: ArrayLike, monetary_value: ArrayLike, *, fitting: bool):
    x = np.asarray(frequency, dtype=np.float64)
    m = np.asarray(monetary_value, dtype=np.float64)
    x, m = np.broadcast_arrays(x, m)
    if np.any(~np.isfinite(x)) or np.any(~np.isfinite(m)) or np.any(x < 0) or np.any(m < 0):
        raise RFMInputError("frequency and monetary_value must be finite and non-negative")
    if fitting and (np.any(x <= 0) or np.any(m <= 0)):
        raise RFMInputError("Gamma-Gamma is fitted on repeat buyers only: frequency > 0 and "
                            "monetary_value > 0 for every row")
    return x, m


def _log_likelihood_terms(params: NDArray[np.float64], x: NDArray[np.float64],
                          m: NDArray[np.float64]):
    """Per-row log-likelihood (FH 2013, eq. 4) and its gradient w.r.t. (p, q, v)."""
    return _prepared_terms(params, *_prepare(x, m))


def _prepare(x: NDArray[np.float64], m: NDArray[np.float64]) -> tuple[NDArray[Any], ...]:
    """What the likelihood needs of the data, computed once per fit rather than per step.

    Frequencies take few distinct values, so the special functions of p*x are evaluated once
    per distinct x and indexed.
    """
    ux, idx = np.unique(x, return_inverse=True)
    return ux, idx.reshape(x.shape), x, x * m, np.log(m), np.log(x)


def _prepared_terms(params: NDArray[np.float64], ux: NDArray[np.float64],
                    idx: NDArray[np.intp], x: NDArray[np.float64], xm: NDArray[np.float64],
                    log_m: NDArray[np.float64], log_x: NDArray[np.float64]):
    """:func:`_log_likelihood_terms` on :func:`_prepare`'d data."""
    p, q, v = params
    pux = p * ux
    lg = (gammaln(pux + q) - gammaln(pux))[idx]
    dg_pxq, dg_px = digamma(pux + q)[idx], digamma(pux)[idx]
    px = p * x
    log_xm_v = np.log(xm + v)
    # eq. 4: G(px+q)/(G(px) G(q)) v^q m^(px-1) x^px / (xm+v)^(px+q)
    ll = (lg - gammaln(q) + q * np.log(v)
          + (px - 1) * log_m + px * log_x - (px + q) * log_xm_v)
    d_p = x * (dg_pxq - dg_px + log_m + log_x - log_xm_v)
    d_q = dg_pxq - digamma(q) + np.log(v) - log_xm_v
    d_v = q / v - (px + q) / (xm + v)
    return ll, np.stack([d_p, d_q, d_v])


class GammaGammaModel(MLEModel):
    """Gamma-Gamma spend model: ``fit(frequency, monetary_value)`` on repeat buyers.

    Parameters
    ----------
    penalizer : float
        L2 penalty on the parameters (lifetimes' convention); 0 for plain maximum likelihood.
    """

    param_names = PARAM_NAMES

    def fit(self, frequency: ArrayLike, monetary_value: ArrayLike,
            weights: ArrayLike | None = None) -> GammaGammaModel:
        """Fit by maximum likelihood (FH 2013, eq. 4)."""
        x, m = _check(frequency, monetary_value, fitting=True)
        w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
        start = np.log(np.array([1.0, 1.0, max(float(np.average(m, weights=w)), 1e-6)]))
        result, ll = fit_weighted(_prepared_terms, _prepare(x, m), w, start,
                                  penalizer=self.penalizer, name="Gamma-Gamma")
        self._set_fit(result, ll, float(w.sum()))
        return self

    def conditional_expected_spend(self, frequency: ArrayLike,
                                   monetary_value: ArrayLike) -> NDArray[np.float64]:
        """E[M | x, m]: expected spend per future occasion (FH 2013, eq. 5).

        A weighted mean of the population mean p*v/(q-1) and the customer's own mean m; for
        x = 0 it is the population mean. Needs q > 1.
        """
        p, q, v = self._fitted()
        if q <= 1:
            raise ValueError(f"q = {q:.3f} <= 1: the population mean spend is not finite")
        x, m = _check(frequency, monetary_value, fitting=False)
        return (p * (v + x * m)) / (p * x + q - 1)
