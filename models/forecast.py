"""A customer's own future as a distribution: purchases and spend in the next t, with intervals.

Point forecasts (E[Y(t) | x, t_x, T], E[M | x, m]) say nothing about how sure they are; a
marketer choosing who gets a VIP offer needs to tell a confident 300 from a guessed 300. This
module turns a fitted purchase model and a Gamma-Gamma spend model into each customer's
predictive distribution and its central interval (10th and 90th percentiles by default).

**Purchases.** Y(t), the purchases in (T, T+t], has

    P(Y = k | x, t_x, T) = (1 - P(alive)) [k = 0] + P(alive) P(Y = k | alive, x, T),

the second factor from the model (``purchase_pmf_if_alive``: FHL 2005 eq. 8 conditioned on the
history for BG/NBD and MBG/NBD, Fader & Hardie 2014 eq. 16 in integral form for Pareto/NBD).
It is computed up to a k where less than 1e-7 of the mass is left (Y is at most the purchases
of an immortal customer, a negative binomial, which bounds the k needed).

**Spend.** Given Y = k, the spend is the sum of k occasion amounts, z ~ Gamma(p, nu), with
nu ~ Gamma(q + p x, gamma + x m) a posteriori (Fader & Hardie 2013, eqs. 1-3). The sum is
Gamma(k p, nu), and integrating nu out gives S_k = (gamma + x m) W_k with W_k beta-prime:
P(W_k <= w) = I_{w/(1+w)}(k p, q + p x) (regularised incomplete beta). So the spend is a
point mass at 0 (P(Y = 0)) plus a mixture of scaled beta-prime laws, and its quantiles are
(gamma + x m) times quantiles of W, whose law depends on the histogram row (x, t_x, T) alone:
computed once per row, like the point scores, and scaled per customer.

Intervals are of the customer's own future given the fitted parameters; the parameters' own
uncertainty is left out (``bench/forecast_calibration.py`` measures what adding it changes).
A discrete quantile is the smallest k with F(k) >= level, so a count interval covers at least
80% of its customer's distribution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import betainc, betaincinv, digamma, polygamma

from models.rfm import check_rfm, compress_with_index

LEVELS = (0.1, 0.9)
_TAIL = 1e-7        # probability mass a row's truncated pmf may leave out
_GRID = 256         # points of a spend grid (log-spaced), for pmfs up to 32 long; the
                    # grid spans more orders for longer ones, so it has more points:
                    # 512 up to 128, then 1024 (heavy buyers are few)
_CHUNK = 4096       # rows per matrix product on the spend grid
_FIRST_K = 8        # smallest truncation tried
_MAX_K = 1 << 16    # longest pmf: a row still short of 1 - 1e-7 here is kept as it is (its
                    # quantiles are then lower bounds); only absurd parameters get there


class CountModel(Protocol):
    """What a predictive distribution needs of a purchase model (all three qualify)."""

    params_: dict[str, float]

    def probability_alive(self, frequency: ArrayLike, recency: ArrayLike,
                          T: ArrayLike) -> NDArray[np.float64]:  # noqa: N803
        """P(alive | x, t_x, T)."""
        ...

    def purchase_pmf_if_alive(self, t: float, frequency: NDArray[np.float64],
                              T: NDArray[np.float64], k_max: int) -> NDArray[np.float64]:  # noqa: N803
        """P(Y(t) = k | alive at T, x), k = 0..k_max (rows x k_max+1)."""
        ...


@dataclass
class PurchaseDistribution:
    """P(Y(t) = k | x, t_x, T) for a set of rows, held as blocks of rows with a common k_max."""

    t: float
    frequency: NDArray[np.float64]
    blocks: list[tuple[NDArray[np.intp], NDArray[np.float64]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of rows."""
        return int(self.frequency.size)

    def take(self, index: NDArray[np.intp]) -> PurchaseDistribution:
        """Row ``index[i]``'s distribution as row i (histogram rows spread to customers)."""
        block_of = np.empty(self.size, dtype=np.intp)
        row_in = np.empty(self.size, dtype=np.intp)
        for b, (rows, _) in enumerate(self.blocks):
            block_of[rows], row_in[rows] = b, np.arange(rows.size)
        out = PurchaseDistribution(self.t, self.frequency[index])
        blocks = block_of[index]
        for b, (_, pmf) in enumerate(self.blocks):
            members = np.flatnonzero(blocks == b)
            if members.size:
                out.blocks.append((members, pmf[row_in[index[members]]]))
        return out

    def quantiles(self, levels: tuple[float, ...] = LEVELS) -> NDArray[np.int64]:
        """Smallest k with P(Y <= k) >= level, per row and level (rows x levels)."""
        out = np.zeros((self.size, len(levels)), dtype=np.int64)
        for rows, pmf in self.blocks:
            cdf = np.cumsum(pmf, axis=1)
            for j, level in enumerate(levels):
                # a relative slack of 1e-12 keeps rounding from pushing an exact tie up a k
                reached = cdf >= level * (1 - 1e-12)
                out[rows, j] = np.where(reached.any(axis=1), np.argmax(reached, axis=1),
                                        pmf.shape[1] - 1)
        return out

    def cdf(self, y: ArrayLike) -> NDArray[np.float64]:
        """P(Y <= y) per row (0 for y < 0; y beyond the truncation gives 1 - <1e-7)."""
        y = np.broadcast_to(np.asarray(y, dtype=np.int64), (self.size,))
        out = np.zeros(self.size)
        for rows, pmf in self.blocks:
            cdf = np.cumsum(pmf, axis=1)
            yk = y[rows]
            inside = yk >= 0
            at = np.clip(yk, 0, pmf.shape[1] - 1)
            out[rows] = np.where(inside, cdf[np.arange(rows.size), at], 0.0)
        return out

    def mean(self) -> NDArray[np.float64]:
        """E[Y(t)] per row, from the truncated pmf (equals the model's own expectation)."""
        out = np.zeros(self.size)
        for rows, pmf in self.blocks:
            out[rows] = pmf @ np.arange(pmf.shape[1], dtype=np.float64)
        return out

    def by_frequency(self) -> Iterator[tuple[float, NDArray[np.intp], NDArray[np.float64]]]:
        """(x, rows, pmf padded to a common width) per distinct frequency and width class.

        The width class of a row depends on its own pmf's length only (:func:`_width_class`),
        so which other rows share its group (and its spend grid) never changes its result.
        """
        groups: dict[tuple[float, int], list[tuple[NDArray[np.intp], NDArray[np.float64]]]] = {}
        for rows, pmf in self.blocks:
            width = _width_class(pmf.shape[1])
            fx = self.frequency[rows]
            for xv in np.unique(fx):
                sel = fx == xv
                groups.setdefault((float(xv), width), []).append((rows[sel], pmf[sel]))
        for (xv, width), parts in sorted(groups.items()):
            rows = np.concatenate([r for r, _ in parts])
            pmf = np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for _, p in parts])
            yield xv, rows, pmf


def _width_class(n: int) -> int:
    """A pmf length rounded up: to a multiple of 8 up to 64, then to a power of two."""
    return -(-n // 8) * 8 if n <= 64 else 1 << int(np.ceil(np.log2(n)))


def purchase_distribution(model: CountModel, t: float, frequency: ArrayLike,
                          recency: ArrayLike, T: ArrayLike) -> PurchaseDistribution:  # noqa: N803
    """The predictive distribution of Y(t), the purchases in the next ``t``, per row."""
    if not np.isfinite(t) or t < 0:
        raise ValueError("horizon t must be finite and non-negative")
    x, t_x, big_t = (a.ravel() for a in np.broadcast_arrays(*check_rfm(frequency, recency, T)))
    alive = np.asarray(model.probability_alive(x, t_x, big_t), dtype=np.float64).ravel()
    dist = PurchaseDistribution(float(t), x)
    # An immortal customer's purchases N(t) bound Y: negative binomial with shape r+x and
    # odds t/(alpha+T). Its mean + 6 sd + 4 is a first guess at the k needed; a row whose
    # pmf still misses more than 1e-7 is computed again with twice the length.
    r, alpha = model.params_["r"], model.params_["alpha"]
    odds = t / (alpha + big_t)
    mean = (r + x) * odds
    need = mean + 6 * np.sqrt(mean * (1 + odds)) + 4
    pending = np.arange(x.size)
    k_max = _FIRST_K
    while pending.size:
        last = k_max >= _MAX_K
        take = pending if last else pending[need[pending] <= k_max]
        done: list[NDArray[np.intp]] = []
        # (rows x k) arrays of at most ~2M values at a time (the pmf and two derived copies)
        step = max(1, (1 << 21) // (k_max + 1))
        for part in np.array_split(take, -(-take.size // step)) if take.size else []:
            pmf = model.purchase_pmf_if_alive(float(t), x[part], big_t[part], k_max)
            if not np.all(np.isfinite(pmf)) or np.any(pmf < -1e-12):
                bad = part[np.flatnonzero(~np.all(np.isfinite(pmf) & (pmf >= -1e-12), axis=1))]
                raise FloatingPointError(
                    f"purchase pmf is not a distribution for x={x[bad[0]]:g}, T={big_t[bad[0]]:g}"
                    f", t={t:g} under {model.params_}")
            enough = pmf.sum(axis=1) >= 1.0 - _TAIL
            keep = np.ones(part.size, dtype=bool) if last else enough
            need[part[~keep]] = 2 * k_max  # rare: the next doubling takes them
            if np.any(keep):
                full = pmf[keep] * alive[part[keep], None]
                full[:, 0] += 1.0 - alive[part[keep]]
                dist.blocks += _trimmed(part[keep], full, pmf[keep])
                done.append(part[keep])
        if done:
            pending = np.setdiff1d(pending, np.concatenate(done), assume_unique=True)
        k_max *= 2
    return dist


def _trimmed(rows: NDArray[np.intp], full: NDArray[np.float64], alive_pmf: NDArray[np.float64]
             ) -> list[tuple[NDArray[np.intp], NDArray[np.float64]]]:
    """Blocks of rows cut to the length each needs (to where < 1e-7 of the mass is left).

    The spend mixture's cost grows with the pmf's length, and most rows need far fewer terms
    than the longest row of their block; rows are grouped by needed length (multiples of 4).
    """
    cdf = np.cumsum(alive_pmf, axis=1)
    need = np.argmax(cdf >= 1.0 - _TAIL, axis=1) + 1
    need = np.where(cdf[:, -1] >= 1.0 - _TAIL, need, alive_pmf.shape[1])
    width = np.minimum(-(-need // 4) * 4, alive_pmf.shape[1])
    return [(rows[width == w], full[width == w, :w]) for w in np.unique(width)]


class _SpendGrids:
    """Component CDFs of the spend given k orders, tabulated once per (x, width).

    I_{w/(1+w)}(k p, q + p x) for k = 1..width-1 on a log-spaced grid of w, kept for reuse
    across blocks of rows.
    """

    def __init__(self, p: float, q: float) -> None:
        if not (np.isfinite(p) and np.isfinite(q) and p > 0 and q > 0):
            raise ValueError(f"Gamma-Gamma shapes p = {p}, q = {q} must be finite and positive")
        self.p, self.q = p, q
        self._tables: dict[tuple[float, int], tuple[NDArray[np.float64],
                                                     NDArray[np.float64]]] = {}

    def table(self, xv: float, width: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """The grid (log w) and the (width-1) x grid component CDFs for frequency ``xv``."""
        key = (xv, width)
        if key not in self._tables:
            p, shape_q = self.p, self.q + self.p * xv
            k = np.arange(1, width, dtype=np.float64)
            # from 1e-3 of the lightest component (below it, its power-law tail is extended)
            # to 1 - 1e-10 of the heaviest, in log w
            lo_u = float(betaincinv(p, shape_q, 1e-3))
            hi_u = float(betaincinv(p * (width - 1), shape_q, 1 - 1e-10))
            if not (0 < lo_u < hi_u < 1):
                raise ValueError(f"spend intervals cannot be computed for Gamma-Gamma p = {p:g}"
                                 f", q = {self.q:g} at {xv:g} repeat purchases")
            points = _GRID if width <= 32 else 2 * _GRID if width <= 128 else 4 * _GRID
            log_w = np.linspace(np.log(lo_u / (1 - lo_u)), np.log(hi_u / (1 - hi_u)), points)
            u = 1.0 / (1.0 + np.exp(-log_w))  # w / (1 + w)
            # A component's CDF rises from 0 to 1 over a band of the grid that narrows as k
            # grows; only the band is evaluated (heavy buyers' tables of 512+ components
            # would otherwise cost ~25 ms each), 0 below it and 1 above. log W_k is
            # log Gamma(k p) - log Gamma(q + p x): mean digamma(kp) - digamma(Q), variance
            # trigamma(kp) + trigamma(Q). With kp >= 5 and Q >= 4 its tails beyond 12 sd
            # hold < 1e-10 (they fall at rates kp and Q per unit of log w); other
            # components are evaluated on the whole grid.
            mean = digamma(k * p) - digamma(shape_q)
            sd = np.sqrt(polygamma(1, k * p) + polygamma(1, shape_q))
            banded = (k * p >= 5) & (shape_q >= 4)
            start = np.where(banded, np.searchsorted(log_w, mean - 12 * sd, side="left"), 0)
            stop = np.where(banded, np.searchsorted(log_w, mean + 12 * sd, side="right"),
                            points)
            cols = np.arange(points)
            inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < stop[:, None])
            comp = (cols[None, :] >= stop[:, None]).astype(np.float64)
            ki, gi = np.nonzero(inside)
            comp[ki, gi] = betainc(k[ki] * p, shape_q, u[gi])
            self._tables[key] = log_w, comp
        return self._tables[key]


def spend_factor_quantiles(dist: PurchaseDistribution, p: float, q: float,
                           levels: tuple[float, ...] = LEVELS,
                           grids: _SpendGrids | None = None) -> NDArray[np.float64]:
    """Quantiles of W = S / (gamma + x m), the spend in the next t in the posterior's scale.

    ``p`` and ``q`` are Gamma-Gamma's shape parameters; a customer's spend quantile is the
    returned factor times (gamma + x m). Rows x levels; 0 where P(Y = 0) >= level.

    For each distinct x the component CDFs are tabulated once on a log-spaced grid of w
    (:class:`_SpendGrids`); a row's mixture CDF is then one matrix product. Between the two
    grid points around a quantile, the CDF of the spend given at least one order is
    interpolated linearly in logit against log w: beta-prime tails are power laws, for which
    that line is exact in the limit (relative error ~2e-6 against root-finding on
    :func:`spend_cdf` on a 1M-customer base; the tests hold it to 1e-4 for p from 0.3 to 20
    and for heavy buyers).
    """
    grids = grids or _SpendGrids(p, q)
    out = np.zeros((dist.size, len(levels)))
    for xv, rows, pmf in dist.by_frequency():
        width = pmf.shape[1]
        log_w, comp = grids.table(xv, width)
        for lo in range(0, rows.size, _CHUNK):
            part = pmf[lo:lo + _CHUNK]
            zero_mass = part[:, :1]
            rest = np.maximum(1.0 - zero_mass, 1e-300)
            given = (part[:, 1:] @ comp) / rest  # CDF given at least one order, rows x grid
            for j, level in enumerate(levels):
                target = level * (1 - 1e-12)
                zero = part[:, 0] >= target
                g = np.clip((target - zero_mass[:, 0]) / rest[:, 0], 1e-300, 1 - 1e-16)
                above = given >= g[:, None]
                idx = np.where(above.any(axis=1), np.argmax(above, axis=1), log_w.size - 1)
                lw = _inverse_quadratic(log_w, given, g, idx)
                out[rows[lo:lo + _CHUNK], j] = np.where(zero, 0.0, np.exp(lw))
    return out


def _logit(p: NDArray[np.float64]) -> NDArray[np.float64]:
    p = np.clip(p, 1e-300, 1 - 1e-16)
    return np.log(p) - np.log1p(-p)


def _inverse_quadratic(log_w: NDArray[np.float64], cdf: NDArray[np.float64],
                       level: NDArray[np.float64], idx: NDArray[np.intp]) -> NDArray[np.float64]:
    """The log w at which each row's CDF on the grid reaches ``level``, from three points.

    ``idx`` is the first grid point at or above the level; only the three points used are
    turned into logits. Inverse quadratic interpolation
    (log w as a quadratic in the logit, through the points idx-1, idx and idx+1, or idx-2 at
    the grid's end), kept inside the bracketing interval (else the line through it). Below
    the grid's first point (a target just above P(Y = 0)) the first segment's line is
    extended: the lower tail of the one-order component, a power law (I_u(p, Q) ~ u^p).
    """
    n = log_w.size
    hi = np.clip(idx, 1, n - 1)
    lo = hi - 1
    other = np.where(hi + 1 < n, hi + 1, lo - 1)
    other = np.where((lo - 1 >= 0) & (hi + 1 >= n), lo - 1, other)
    goal = _logit(level)
    pts = [_logit(np.take_along_axis(cdf, j[:, None], 1)[:, 0]) for j in (lo, hi, other)]
    ws = [log_w[j] for j in (lo, hi, other)]
    y0, y1, y2 = pts
    with np.errstate(divide="ignore", invalid="ignore"):
        quad = (ws[0] * (goal - y1) * (goal - y2) / ((y0 - y1) * (y0 - y2))
                + ws[1] * (goal - y0) * (goal - y2) / ((y1 - y0) * (y1 - y2))
                + ws[2] * (goal - y0) * (goal - y1) / ((y2 - y0) * (y2 - y1)))
        line = ws[0] + (goal - y0) * (ws[1] - ws[0]) / (y1 - y0)
    inside = np.isfinite(quad) & (quad >= ws[0]) & (quad <= ws[1])
    out = np.where(inside, quad, np.where(np.isfinite(line), np.clip(line, ws[0], ws[1]), ws[1]))
    below = idx == 0
    return np.where(below & np.isfinite(line), line, out)


def intervals(model: CountModel, t: float, frequency: ArrayLike, recency: ArrayLike,
              T: ArrayLike, p: float, q: float, levels: tuple[float, ...] = LEVELS,  # noqa: N803
              rows_per_pass: int = 50_000) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Purchase quantiles and spend-factor quantiles of many rows, in bounded memory.

    The rows are taken in passes of ``rows_per_pass`` (in order of the purchase count they
    need, so a pass's pmfs have similar lengths); each pass's distribution is dropped once
    its quantiles are taken, and the spend grids are shared by all passes.
    """
    x, t_x, big_t = (a.ravel() for a in np.broadcast_arrays(*check_rfm(frequency, recency, T)))
    counts = np.zeros((x.size, len(levels)), dtype=np.int64)
    factors = np.zeros((x.size, len(levels)))
    grids = _SpendGrids(p, q)
    r, alpha = model.params_["r"], model.params_["alpha"]
    order = np.argsort((r + x) * t / (alpha + big_t), kind="stable")
    for lo in range(0, x.size, rows_per_pass):
        part = order[lo:lo + rows_per_pass]
        dist = purchase_distribution(model, t, x[part], t_x[part], big_t[part])
        counts[part] = dist.quantiles(levels)
        factors[part] = spend_factor_quantiles(dist, p, q, levels, grids)
    return counts, factors


def spend_cdf(dist: PurchaseDistribution, p: float, q: float,
              factor: ArrayLike) -> NDArray[np.float64]:
    """P(S <= s) per row, given s / (gamma + x m) as ``factor`` (exact, no grid)."""
    w = np.broadcast_to(np.asarray(factor, dtype=np.float64), (dist.size,))
    out = np.zeros(dist.size)
    for rows, pmf in dist.blocks:
        width = pmf.shape[1]
        k = np.arange(1, width, dtype=np.float64)
        shape_q = (q + p * dist.frequency[rows])[:, None]
        wr = w[rows][:, None]
        u = np.where(wr > 0, wr / (1 + wr), 0.0)
        comp = betainc(k[None, :] * p, shape_q, u)
        out[rows] = np.where(w[rows] >= 0, pmf[:, 0] + (pmf[:, 1:] * comp).sum(axis=1), 0.0)
    return out


@dataclass(frozen=True)
class Recalibration:
    """Interval levels learned on a backtest, and the backtest's PIT (ten bins)."""

    levels: tuple[float, ...]
    pit: tuple[float, ...]
    customers: int


def recalibrate(model: CountModel, t: float, frequency: ArrayLike, recency: ArrayLike,
                T: ArrayLike, actual: ArrayLike, *, levels: tuple[float, ...] = LEVELS,  # noqa: N803
                seed: int = 0, max_customers: int = 200_000,
                bounds: tuple[float, float] = (0.02, 0.98)) -> Recalibration:
    """The levels at which ``model``'s quantiles were calibrated on a backtest.

    ``model`` is fitted on a calibration period and ``actual`` holds each customer's purchases
    in the ``t`` days after it. With u the randomized PIT of the actual counts (Czado, Gneiting
    & Held 2009: uniform between F(y-1) and F(y)) and R its empirical CDF, R(F) is the
    recalibrated predictive CDF (Kuleshov, Fenner & Ermon 2018), whose level-a quantile is
    F's quantile at level R^-1(a): the empirical a-quantile of u. A model that is calibrated
    gets back about its nominal levels. Customers beyond ``max_customers`` are sampled (the
    quantile of 200,000 PIT values is within ~0.001); levels are kept within ``bounds``.
    """
    x, t_x, big_t = (a.ravel() for a in np.broadcast_arrays(*check_rfm(frequency, recency, T)))
    y = np.asarray(actual, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    if x.size > max_customers:
        pick = np.sort(rng.choice(x.size, max_customers, replace=False))
        x, t_x, big_t, y = x[pick], t_x[pick], big_t[pick], y[pick]
    hist, index = compress_with_index(x, t_x, big_t)
    cust = purchase_distribution(model, t, hist.frequency, hist.recency, hist.T).take(index)
    below, at = cust.cdf(y - 1), cust.cdf(y)
    u = below + rng.random(y.size) * (at - below)
    learned = np.clip(np.quantile(u, levels), *bounds)
    pit = np.histogram(u, bins=10, range=(0, 1))[0] / max(y.size, 1)
    return Recalibration(tuple(float(v) for v in learned), tuple(float(v) for v in pit),
                         int(y.size))


def stored_levels(record: dict | None) -> tuple[float, ...]:
    """The levels a run's intervals were computed at, from its ``intervals`` record.

    A run from before the intervals, or one without a backtest to learn from, has none:
    the nominal levels.
    """
    found = (record or {}).get("calibrated_levels")
    if isinstance(found, list) and len(found) == len(LEVELS) and all(
            isinstance(v, int | float) and 0 < v < 1 for v in found):
        return tuple(float(v) for v in found)
    return LEVELS
