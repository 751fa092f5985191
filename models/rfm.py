"""RFM inputs of the buy-till-you-die models: validation and compression.

Notation (Fader, Hardie & Lee 2005): for each customer, ``frequency`` x is the number of repeat
purchase occasions, ``recency`` t_x the time from the first to the last occasion, and ``T`` the
time from the first occasion to the end of the observation period, all in one time unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


class RFMInputError(ValueError):
    """RFM arrays that no customer history could produce."""


def check_rfm(
    frequency: ArrayLike,
    recency: ArrayLike,
    T: ArrayLike,  # noqa: N803 - the literature's notation
    *,
    monetary_value: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], ...]:
    """Validate RFM arrays and return them as float64 arrays of one shape.

    Checks that every value is finite and non-negative, frequency is a whole number,
    recency <= T, and recency = 0 where frequency = 0 (one occasion only). With
    ``monetary_value``, also that it is finite, non-negative, and positive wherever
    frequency > 0.

    Raises
    ------
    RFMInputError
        Naming the first rule broken, how many rows break it, and the first such row.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in (frequency, recency, T)]
    names = ["frequency", "recency", "T"]
    if monetary_value is not None:
        arrays.append(np.asarray(monetary_value, dtype=np.float64))
        names.append("monetary_value")
    try:
        arrays = list(np.broadcast_arrays(*arrays))
    except ValueError as exc:
        raise RFMInputError(f"RFM arrays have different lengths: {exc}") from None
    x, t_x, big_t = arrays[:3]

    def fail(mask: NDArray[np.bool_], rule: str) -> None:
        if np.any(mask):
            idx = np.flatnonzero(mask)
            raise RFMInputError(f"{rule}: {idx.size} row(s), first at index {idx[0]}")

    for name, arr in zip(names, arrays, strict=True):
        fail(~np.isfinite(arr), f"{name} must be finite")
        fail(arr < 0, f"{name} must be non-negative")
    fail(x != np.floor(x), "frequency must be a whole number")
    fail(t_x > big_t, "recency must not exceed T")
    fail((x == 0) & (t_x != 0), "recency must be 0 when frequency is 0")
    if monetary_value is not None:
        fail((x > 0) & (arrays[3] <= 0), "monetary_value must be positive when frequency > 0")
    return tuple(np.array(a, dtype=np.float64, order="C") for a in arrays)  # keeps 0-d shape


@dataclass(frozen=True)
class RFMHistogram:
    """Unique (x, t_x, T) rows with their counts: all a purchase-model fit needs.

    Customers with the same history contribute the same likelihood term, so a fit over the
    histogram equals the fit over all customers at a fraction of the cost (DESIGN.md §6).
    """

    frequency: NDArray[np.float64]
    recency: NDArray[np.float64]
    T: NDArray[np.float64]  # noqa: N815 - the literature's notation
    weights: NDArray[np.float64]

    @property
    def n_customers(self) -> float:
        """Customers represented."""
        return float(self.weights.sum())


def compress(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike,  # noqa: N803
             weights: ArrayLike | None = None) -> RFMHistogram:
    """Collapse per-customer RFM arrays into an :class:`RFMHistogram` (validating them)."""
    return compress_with_index(frequency, recency, T, weights)[0]


def compress_with_index(frequency: ArrayLike, recency: ArrayLike, T: ArrayLike,  # noqa: N803
                        weights: ArrayLike | None = None
                        ) -> tuple[RFMHistogram, NDArray[np.intp]]:
    """:func:`compress`, plus each input row's index into the histogram.

    Anything a purchase model computes per customer depends on (x, t_x, T) only, so it can be
    computed once per histogram row and spread back with ``values[index]``.
    """
    x, t_x, big_t = check_rfm(frequency, recency, T)
    x, t_x, big_t = x.ravel(), t_x.ravel(), big_t.ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != x.shape or np.any(~np.isfinite(w)) or np.any(w <= 0):
        raise RFMInputError("weights must be positive, finite and one per row")
    span = float(big_t.max()) + 1 if big_t.size else 1.0
    whole = bool(np.all(t_x == np.floor(t_x)) and np.all(big_t == np.floor(big_t)))
    if whole and x.size and float(x.max()) * span * span < 2**62:
        # Whole days (the service's case): one int64 key per row, and a 1-D unique that is
        # an order of magnitude faster than np.unique(axis=0).
        key = (x.astype(np.int64) * int(span) + t_x.astype(np.int64)) * int(span) \
            + big_t.astype(np.int64)
        keys, inverse = np.unique(key, return_inverse=True)
        counts = np.bincount(inverse, weights=w, minlength=keys.size)
        big_t_u = keys % int(span)
        rest = keys // int(span)
        return RFMHistogram((rest // int(span)).astype(np.float64),
                            (rest % int(span)).astype(np.float64),
                            big_t_u.astype(np.float64), counts.astype(np.float64)), inverse
    stacked = np.stack([x, t_x, big_t], axis=1)
    unique, inverse = np.unique(stacked, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    counts = np.bincount(inverse, weights=w, minlength=unique.shape[0])
    return RFMHistogram(unique[:, 0].copy(), unique[:, 1].copy(), unique[:, 2].copy(),
                        counts.astype(np.float64)), inverse
