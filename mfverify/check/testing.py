"""Checks of a researcher's own loss from their own pytest suite (needs ``hypothesis``).

Strategies (composable, as hypothesis's docs recommend): ``mixtures()``,
``gaussians()``, ``mixtures_1d()``, ``product_mixtures()``, ``times(n)``,
``networks(d)``, ``batches()``; ``points_on_path(mixture, t, seed)``.

Assertions, each raising ``AssertionError`` with the numbers and the rule:

- ``assert_reduces_to_fm(loss, ...)``: at ``r = t`` the loss is ``fm`` up to a factor;
- ``assert_equivalent(loss, reference, up_to_constant=True, ...)``;
- ``assert_stationary(loss, mixture="ring8", ...)``: the exact average velocity is a
  stationary point of the population loss (exact route where the loss declares
  itself quadratic in ``v_c``, Monte Carlo otherwise);
- ``assert_as_written(fn, cases=None, framework="torch", **options)``: the as-written battery
  (``mfverify check --as-written``) on a batch loss ``fn(model, x0)``, as the repository writes it;
  a defect raises ``AssertionError``, too little evidence raises ``Undecided`` (a subclass: the
  test fails, never passes silently), with the report's table. Returns the report.

``loss`` is anything ``mfverify.objectives.get`` takes: a name, ``"module:attr"``, an
``Objective`` or a per-sample loss ``loss(model, x0, x1, r, t) -> (n,)``.
A worked example: ``docs/examples/test_my_loss.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from mfverify.cases import GaussianMixture, LowRankMixture, ProductMixture
from mfverify import path
from mfverify.check import battery as _check
from mfverify.check.report import fmt
from mfverify.nets import MeanFlowMLP

__all__ = [
    "mixtures", "gaussians", "mixtures_1d", "product_mixtures", "lowrank_mixtures", "covariances", "times",
    "networks", "batches",
    "points_on_path", "assert_reduces_to_fm", "assert_equivalent", "assert_stationary", "assert_as_written",
    "Undecided",
]


@st.composite
def covariances(draw, d: int, min_log10_eig: float = -6.0):
    """Random full covariance, eigenvalues from ``10**min_log10_eig`` (near-singular) to 2."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lo = draw(st.floats(min_log10_eig, -0.5))
    lam = 10 ** rng.uniform(lo, np.log10(2.0), size=d)
    S = (q * lam) @ q.T
    return 0.5 * (S + S.T)


@st.composite
def mixtures(draw, K=st.integers(1, 5), d=st.integers(1, 6), min_log10_eig: float = -6.0):
    """A ``GaussianMixture`` with random weights, means and full covariances."""
    K, d = draw(K), draw(d)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(K, 2.0)) * 0.9 + 0.1 / K  # no vanishing component
    w = w / w.sum()
    mu = rng.normal(0.0, 1.5, size=(K, d))
    S = np.stack([draw(covariances(d, min_log10_eig)) for _ in range(K)])
    return GaussianMixture(w, mu, S)


def gaussians(d=st.integers(1, 8), min_log10_eig: float = -6.0):
    return mixtures(K=st.just(1), d=d, min_log10_eig=min_log10_eig)


def mixtures_1d(K=st.integers(1, 5), min_log10_eig: float = -4.0):
    return mixtures(K=K, d=st.just(1), min_log10_eig=min_log10_eig)


@st.composite
def product_mixtures(draw, d=st.integers(1, 6)):
    return ProductMixture([draw(mixtures_1d(K=st.integers(1, 3))) for _ in range(draw(d))])


@st.composite
def lowrank_mixtures(draw, K=st.integers(1, 4), d=st.integers(1, 8), q=None, min_log10_noise: float = -3.0):
    """A ``LowRankMixture`` with random weights, means, factors (q in [1, d] unless given) and noise."""
    K, d = draw(K), draw(d)
    q = draw(st.integers(1, d) if q is None else q)
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    w = rng.dirichlet(np.full(K, 2.0)) * 0.9 + 0.1 / K
    noise = 10 ** rng.uniform(min_log10_noise, -0.5, size=K)
    factors = rng.normal(0.0, 0.6, size=(K, d, q)) / np.sqrt(q)
    return LowRankMixture(w / w.sum(), rng.normal(0.0, 1.5, size=(K, d)), factors, noise)


@st.composite
def times(draw, n: int, t_min: float = 0.02, r_min: float = 0.0, min_gap: float = 0.0):
    """``(r, t)`` as (n,) tensors with ``r_min <= r <= t - min_gap``, ``t_min <= t <= 1``; some full intervals."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    t = t_min + (1 - t_min) * torch.rand(n, generator=g, dtype=torch.float64)
    frac = torch.rand(n, generator=g, dtype=torch.float64)
    r = r_min + (t - min_gap - r_min).clamp_min(0) * frac
    if draw(st.booleans()):
        t[0], r[0] = 1.0, max(r_min, 0.0)
    return r, t


def points_on_path(mixture, t: torch.Tensor, seed: int) -> torch.Tensor:
    """``x_t = (1-t) x0 + t x1`` for the given times: typical points of ``p_t``."""
    return path.sample(mixture, t, torch.Generator().manual_seed(seed))


@st.composite
def networks(draw, d=st.integers(1, 3)):
    """A random float64 ``MeanFlowMLP`` (``u_theta(x, r, t)``) of dimension ``d``."""
    d = draw(d) if isinstance(d, st.SearchStrategy) else d
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    return MeanFlowMLP(
        d,
        width=draw(st.sampled_from([8, 16, 32])),
        depth=draw(st.integers(1, 3)),
        time_inputs=draw(st.sampled_from(["t,t-r", "t,r"])),
        time_features=draw(st.sampled_from(["sinusoidal", "fourier"])),
        dtype=torch.float64,
    )


@st.composite
def batches(draw, n: int = 6, d=st.integers(1, 4), r_eq_t: bool = False, r_zero: bool = False):
    """``(model, x0, x1, r, t)``: a random network and a batch, ``0 < t <= 1``, ``r <= t``
    (``r = t`` with ``r_eq_t``, ``r = 0`` with ``r_zero``)."""
    d = draw(d) if isinstance(d, st.SearchStrategy) else d
    model = draw(networks(st.just(d)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x0 = 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    x1 = torch.randn(n, d, generator=g, dtype=torch.float64)
    t = 0.02 + 0.98 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t.clone() if r_eq_t else t * torch.rand(n, generator=g, dtype=torch.float64)
    if r_zero:
        r = torch.zeros_like(t)
    return model, x0, x1, r, t


# ------------------------------------------------------------------ assertions


def _batch(model, x0, x1, r, t, seed):
    if model is None:
        return _check._networks(seed, "mlp")
    g = torch.Generator().manual_seed(seed)
    w = 0.5 + torch.rand(x0.shape[0], generator=g, dtype=torch.float64)
    return [(model, x0, x1, r, t, w)]


def _fail(result, what):
    details = ", ".join(f"{k} = {fmt(v)}" for k, v in result.details.items())
    raise AssertionError(f"{what}: {result.name} failed: value {fmt(result.value)} against the rule "
                         f"[{result.rule}]; {details}")


def assert_reduces_to_fm(loss, model=None, x0=None, x1=None, t=None, options=None, seed: int = 0):
    """At ``r = t`` the loss's values and gradient are ``k`` times ``fm``'s, one ``k > 0``.

    Without a batch: random networks in d = 1, 2, 3 with random data and times.
    Returns the factor ``k``."""
    subject = _check._Loss(loss, options)
    batches = _batch(model, x0, x1, t, t, seed)
    result = _check.check_reduces_to_fm(subject, batches, seed)
    if not result.passed:
        _fail(result, subject.name)
    return result.details["factor"]


def assert_equivalent(loss, reference, model=None, x0=None, x1=None, r=None, t=None, up_to_constant: bool = True,
                      options=None, seed: int = 0, per_dimension: bool = False):
    """The loss equals ``reference`` (value and parameter gradient) up to one factor ``k > 0``
    (``k = 1`` unless ``up_to_constant``; with ``per_dimension`` one factor per dimension
    ``d``, as for a loss averaged over coordinates). Returns ``k``."""
    subject = _check._Loss(loss, options)
    result = _check.check_equivalent(subject, _check._Loss(reference, None), _batch(model, x0, x1, r, t, seed), seed)
    if not result.passed:
        _fail(result, subject.name)
    kind = result.details["factor_kind"]
    if kind != "constant" and not per_dimension:
        raise AssertionError(f"{subject.name}: equivalent_to_reference failed: equal to {reference!s} only with a "
                             f"factor per dimension ({kind}: {result.details['factors_per_d']}); pass "
                             "per_dimension=True to accept that, or wrap the loss (conventions.coordinate_mean)")
    k = result.details["factor"]
    if not up_to_constant and abs(k - 1) > _check.EQUAL_RTOL:
        raise AssertionError(f"{subject.name}: equals {result.details['reference']} only up to the factor {k!r}, "
                             "not exactly (up_to_constant=False)")
    return k


def assert_stationary(loss, mixture="ring8", x=None, r=None, t=None, directions=None, options=None, seed: int = 0,
                      n_points: int = 4, n_samples: int = 20_000):
    """The exact ``u*`` of ``mixture`` (a name or a mixture) is a stationary point of the loss.

    ``x, r, t``: the points (default: drawn from ``p_t``); ``directions``: ``{name: h(x, r, t)}``
    (default: a random network and a wavy field). Returns the statistic (exact: relative
    size of the population derivative; Monte Carlo: the largest |z|)."""
    subject = _check._Loss(loss, options)
    points = None if x is None else (torch.as_tensor(x, dtype=torch.float64),
                                     torch.as_tensor(r, dtype=torch.float64), torch.as_tensor(t, dtype=torch.float64))
    result = _check.check_stationary(subject, [mixture], seed, n_points, n_samples, points=points,
                                     directions=directions)
    if not result.passed:
        _fail(result, subject.name)
    return result.value


class Undecided(AssertionError):
    """``assert_as_written``: some case ran out of batches before deciding, and nothing failed (the
    command's exit status 3). A failure of the test, never a pass: raise ``max_batches`` or lower the
    demand (``resolution``), as the message says."""


def assert_as_written(fn, cases=None, framework: str = "torch", **options):
    """The as-written battery on ``fn`` (``mfverify.check.as_written.run_as_written``, with its
    ``options``: ``seed``, ``max_batches``, ``resolution``, ``inputs``, ``layout``, ...). Passes when every
    check passes; a failed check raises ``AssertionError``, an undecided case ``Undecided``, each with
    the report's table and notes. Returns the ``Report`` (its ``checks["stationary_as_written"]``
    holds the detectable move: how far off ``u*`` a loss would have had to train to be caught)."""
    from mfverify.check.as_written import run_as_written

    report = run_as_written(fn, cases=cases, framework=framework, **options)
    if report.verdict == "passed":
        return report
    text = "\n".join([report.table(), *report.notes])
    if report.verdict == "undecided":
        raise Undecided(f"{report.loss}: undecided (too little evidence, nothing failed)\n{text}")
    raise AssertionError(f"{report.loss}: {report.verdict}\n{text}")
