"""Maximum-likelihood machinery shared by the purchase and spend models.

Positive parameters are optimised on the log scale (unconstrained), with an analytic gradient,
by L-BFGS-B; the fit is checked for convergence and standard errors come from the inverse of the
observed information (a finite-difference Hessian of the analytic gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from threadpoolctl import threadpool_limits

from models.rfm import RFMHistogram, compress

# (log-params) -> (negative log-likelihood, gradient w.r.t. log-params)
Objective = Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64]]]


_LOG_BOUND = 30.0  # parameters between e^-30 and e^30; a fit that ends near a bound is refused


class ConvergenceError(RuntimeError):
    """The optimiser did not reach a maximum of the likelihood."""


@dataclass(frozen=True)
class FitResult:
    """A converged maximum-likelihood fit."""

    params: NDArray[np.float64]
    log_likelihood: float
    standard_errors: NDArray[np.float64]
    iterations: int
    # Covariance of the log-parameters (inverse observed information); NaN when skipped.
    log_covariance: NDArray[np.float64] | None = None


# (params, *data) -> (per-row log-likelihood, per-row gradient (k x rows), ...)
Terms = Callable[..., tuple]


def fit_weighted(terms: Terms, data: tuple[NDArray[np.float64], ...],
                 weights: NDArray[np.float64], start: NDArray[np.float64], *,
                 penalizer: float, name: str,
                 standard_errors: bool = True) -> tuple[FitResult, float]:
    """Penalised, weighted maximum likelihood over rows of ``data`` (e.g. a histogram).

    The penalty is lifetimes' convention: ``penalizer * n * sum(params**2)`` added to the total
    negative log-likelihood. Returns the fit and the unpenalised log-likelihood at the optimum.
    """
    n = float(weights.sum())

    def objective(log_params: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        params = np.exp(log_params)
        ll, grad = terms(params, *data)[:2]
        # einsum rather than BLAS: BLAS threads left spinning after a product compete with
        # the likelihood's own threads for the cores.
        value = -float(np.einsum("i,i->", weights, ll)) + penalizer * n * float(params @ params)
        g = -np.einsum("ki,i->k", grad, weights) + 2 * penalizer * n * params
        return value, g * params  # chain rule to the log scale

    # One BLAS thread: idle BLAS threads spin after each small product and take cores from
    # the likelihood's own block threads.
    with threadpool_limits(1, user_api="blas"):
        result = maximise(objective, start, name=name, scale=n,
                          standard_errors=standard_errors)
    return result, float(weights @ terms(result.params, *data)[0])


class MLEModel:
    """Shared scikit-learn-style plumbing of the maximum-likelihood models.

    Parameters
    ----------
    penalizer : float
        L2 penalty on the parameters (lifetimes' convention); 0 for plain maximum likelihood.
    """

    param_names: tuple[str, ...] = ()

    def __init__(self, penalizer: float = 0.0) -> None:
        self.penalizer = penalizer

    @classmethod
    def from_params(cls, params: dict[str, float]):
        """A model with given parameters (e.g. loaded from a stored run)."""
        model = cls()
        model.params_ = {k: float(params[k]) for k in cls.param_names}
        return model

    def _set_fit(self, result: FitResult, log_likelihood: float, n: float) -> None:
        self.params_ = dict(zip(self.param_names, result.params.tolist(), strict=True))
        self.standard_errors_ = dict(zip(self.param_names, result.standard_errors.tolist(),
                                         strict=True))
        self.log_likelihood_ = log_likelihood
        self.n_customers_ = n
        self.log_covariance_ = result.log_covariance

    def _fitted(self) -> NDArray[np.float64]:
        """The parameters in ``param_names`` order; raises if the model is not fitted."""
        if not hasattr(self, "params_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit() first")
        return np.array([self.params_[k] for k in self.param_names])


def maximise(objective: Objective, start: NDArray[np.float64], *, name: str,
             max_iter: int = 500, scale: float = 1.0,
             standard_errors: bool = True) -> FitResult:
    """Minimise ``objective`` over log-parameters; return natural parameters and their SEs.

    ``scale`` is the number of observations behind the objective; ``standard_errors=False``
    skips the Hessian (k + 1 gradient evaluations) and leaves NaN SEs, for fits whose only
    use is their predictions (a backtest). When the line search stops
    because the objective is flat to rounding (a start at, or a step onto, the optimum), the
    point is accepted if the gradient per observation is below 1e-6: a stationary point (it
    moves the log-parameters by ~1e-6, far inside their standard errors).

    Raises
    ------
    ConvergenceError
        If the optimiser stops without convergence or the result is not finite.
    """
    # Bounded: on data that cannot identify a model the line search would otherwise step to
    # log-parameters of 1e280 and overflow; a fit that ends on a bound is refused below.
    def run(x0: NDArray[np.float64]) -> Any:
        return minimize(objective, x0, jac=True, method="L-BFGS-B",
                        bounds=[(-_LOG_BOUND, _LOG_BOUND)] * start.size,
                        options={"maxiter": max_iter, "gtol": 1e-8, "ftol": 1e-12})

    def stationary(r: Any) -> bool:
        return bool(np.all(np.isfinite(r.jac))
                    and np.max(np.abs(r.jac)) <= 1e-6 * max(scale, 1.0))

    res = run(start)
    if not (res.success or stationary(res)) and np.all(np.isfinite(res.x)):
        # A line search that stalls (rounding noise in a flat likelihood) usually finishes
        # when restarted from where it stopped, with a fresh curvature estimate.
        res = run(np.asarray(res.x, dtype=np.float64))
    log_params = np.asarray(res.x, dtype=np.float64)
    finite = bool(np.all(np.isfinite(log_params)) and np.isfinite(res.fun))
    if not (res.success or stationary(res)) or not finite:
        raise ConvergenceError(f"{name} fit did not converge: {res.message}")
    if np.any(np.abs(log_params) > _LOG_BOUND - 0.5):
        raise ConvergenceError(
            f"{name} fit ran to a boundary (a parameter is ~0 or ~infinite): "
            "the data cannot identify the model"
        )
    params = np.exp(log_params)
    cov_log = (_log_covariance(objective, log_params) if standard_errors
               else np.full((log_params.size, log_params.size), np.nan))
    var_log = np.clip(np.diag(cov_log), 0, None)
    # d(exp(u))/du = exp(u): SE(theta) = theta * SE(log theta) (the delta method)
    return FitResult(params=params, log_likelihood=-float(res.fun),
                     standard_errors=params * np.sqrt(var_log), iterations=int(res.nit),
                     log_covariance=cov_log)


def _log_covariance(objective: Objective, log_params: NDArray[np.float64]) -> NDArray[np.float64]:
    """Covariance of the log-parameters: the inverse of the log-scale Hessian (NaN if singular).

    The Hessian is a forward difference of the analytic gradient (k + 1 gradient evaluations,
    not 2k): at the optimum its O(h) error is far below the sampling error it describes.
    """
    k = log_params.size
    hess = np.empty((k, k))
    g0 = objective(log_params)[1]
    for i in range(k):
        h = 1e-6 * max(1.0, abs(log_params[i]))
        up = log_params.copy()
        up[i] += h
        hess[:, i] = (objective(up)[1] - g0) / h
    hess = (hess + hess.T) / 2
    try:
        return np.asarray(np.linalg.inv(hess), dtype=np.float64)
    except np.linalg.LinAlgError:
        return np.full((k, k), np.nan)


class PurchaseMLEModel(MLEModel):
    """A purchase model fitted on the (x, t_x, T) histogram: the shared ``fit``.

    Subclasses give ``label``, ``_likelihood`` (per-row log-likelihood and gradient) and
    ``_default_start``.
    """

    label = ""
    _likelihood: Terms

    def _default_start(self, hist: RFMHistogram) -> list[float]:
        raise NotImplementedError

    def fit(self, frequency: ArrayLike | RFMHistogram, recency: ArrayLike | None = None,
            T: ArrayLike | None = None, *,  # noqa: N803
            initial: dict[str, float] | None = None, standard_errors: bool = True) -> Self:
        """Fit by maximum likelihood on per-customer arrays or an :class:`RFMHistogram`.

        ``initial`` starts the optimiser from given parameters (e.g. a fit on similar data);
        ``standard_errors=False`` skips them (NaN), when only the predictions are used.
        """
        hist = frequency if isinstance(frequency, RFMHistogram) else compress(
            frequency, recency, T)  # type: ignore[arg-type]
        start = np.log([initial[k] for k in self.param_names] if initial
                       else self._default_start(hist))
        result, ll = fit_weighted(type(self)._likelihood, (hist.frequency, hist.recency, hist.T),
                                  hist.weights, start, penalizer=self.penalizer,
                                  name=self.label, standard_errors=standard_errors)
        self._set_fit(result, ll, hist.n_customers)
        return self
