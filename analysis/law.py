"""The scaling law with learning-rate annealing: the one formula the forecast and the
forecast family fit.

Tissue et al. 2024 ("Scaling Law with Learning Rate Annealing", arXiv:2408.11029) write a
run's whole loss curve as

    L(s) = L0 + A * S1(s) ** (-alpha) - C * S2(s)

    S1(s) = sum_{i=1..s} eta_i                            forward area
    S2(s) = sum_{i=1..s} m_i,  m_i = lam * m_{i-1} + (eta_{i-1} - eta_i)   annealing area

where eta_i is the learning rate of the i-th optimizer step and lam (about 0.999) is the
"momentum" with which an lr drop keeps lowering the loss for a while after it happens.
``analysis.forecast`` fits the constants to one run, ``analysis.family`` the shape
(alpha, C, lam) to a family of runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import signal

ANNEALING_MOMENTUM = 0.999  # the paper's lambda
# alpha beyond these is a fit gone astray rather than a loss curve.
ALPHA_BOUNDS = (0.01, 5.0)


def annealing_areas(lr_per_step: Sequence[float] | np.ndarray,
                    momentum: float = ANNEALING_MOMENTUM) -> tuple[np.ndarray, np.ndarray]:
    """S1 and S2 after each number of optimizer steps: index s holds the areas after s steps.

    Both are in the lr's own units, as in the paper, so C fitted on one run carries to a
    run with another peak lr (annealing from a lower lr brings a smaller drop). The
    initial rise (warmup) is not annealing: its lr increases are left out of S2, where
    they would count as "negative annealing" and push the loss up. Later increases (a
    re-warm) do count, as in the paper.
    """
    eta = np.asarray(lr_per_step, dtype=float)
    drop = np.zeros_like(eta)
    drop[1:] = eta[:-1] - eta[1:]  # eta_0 is taken equal to eta_1: no drop at the start
    falls = np.flatnonzero(drop > 0)
    drop[: falls[0] if falls.size else drop.size] = 0.0
    m = signal.lfilter([1.0], [1.0, -momentum], drop)  # m_i = lam * m_{i-1} + drop_i
    s1 = np.concatenate(([0.0], np.cumsum(eta)))
    s2 = np.concatenate(([0.0], np.cumsum(m)))
    return s1, s2


def loss_at(l0: float, a: float, alpha: float, c: float, s1: np.ndarray,
            s2: np.ndarray) -> np.ndarray:
    """The law's loss at the given areas, never below zero: a cross-entropy cannot be, and
    the annealing term extrapolated far (a run at a huge lr has a huge S2) would say so."""
    return np.maximum(l0 + a * s1 ** (-alpha) - c * s2, 0.0)
