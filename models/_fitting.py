"""Maximum-likelihood machinery shared by the purchase and spend models.

Positive parameters are optimised on the log scale (unconstrained), with an analytic gradient,
by L-BFGS-B; the fit is checked for convergence and standard errors come from the inverse of the
observed information (a finite-difference Hessian of the analytic gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize

# (log-params) -> (negative log-likelihood, gradient w.r.t. log-params)
Objective = Callable[[NDArray[np.float64]], tuple[float, NDArray[np.float64]]]


class ConvergenceError(RuntimeError):
    """The optimiser did not reach a maximum of the likelihood."""


@dataclass(frozen=True)
class FitResult:
    """A converged maximum-likelihood fit."""

    params: NDArray[np.float64]
    log_likelihood: float
    standard_errors: NDArray[np.float64]
    iterations: int


def maximise(objective: Objective, start: NDArray[np.float64], *, name: str,
             max_iter: int = 500) -> FitResult:
    """Minimise ``objective`` over log-parameters; return natural parameters and their SEs.

    Raises
    ------
    ConvergenceError
        If the optimiser stops without convergence or the result is not finite.
    """
    res = minimize(objective, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "gtol": 1e-8, "ftol": 1e-12})
    log_params = np.asarray(res.x, dtype=np.float64)
    if not res.success or not np.all(np.isfinite(log_params)) or not np.isfinite(res.fun):
        raise ConvergenceError(f"{name} fit did not converge: {res.message}")
    if np.any(np.abs(log_params) > 30):
        raise ConvergenceError(
            f"{name} fit ran to a boundary (a parameter is ~0 or ~infinite): "
            "the data cannot identify the model"
        )
    params = np.exp(log_params)
    return FitResult(params=params, log_likelihood=-float(res.fun),
                     standard_errors=_standard_errors(objective, log_params),
                     iterations=int(res.nit))


def _standard_errors(objective: Objective, log_params: NDArray[np.float64]) -> NDArray[np.float64]:
    """SEs of the natural parameters via the delta method from the log-scale Hessian."""
    k = log_params.size
    hess = np.empty((k, k))
    for i in range(k):
        h = 1e-5 * max(1.0, abs(log_params[i]))
        up, down = log_params.copy(), log_params.copy()
        up[i] += h
        down[i] -= h
        hess[:, i] = (objective(up)[1] - objective(down)[1]) / (2 * h)
    hess = (hess + hess.T) / 2
    try:
        cov_log = np.linalg.inv(hess)
    except np.linalg.LinAlgError:
        return np.full(k, np.nan)
    var_log = np.clip(np.diag(cov_log), 0, None)
    # d(exp(u))/du = exp(u): SE(theta) = theta * SE(log theta)
    return np.exp(log_params) * np.sqrt(var_log)
