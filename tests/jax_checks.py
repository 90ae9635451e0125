"""The exact model as a JAX function (``mfverify.jax``, issue 24 part 1).

Run by ``tests/test_jax.py`` in a process of its own: JAX is multithreaded, and a
process that has imported it must not fork (the study's process executors do), so
these never share a pytest worker with the rest of the suite. JAX is in the ``test``
extra, so CI runs these; outside CI, without JAX, they skip saying why. Values and JVPs are compared with the torch ``ExactNetwork`` (the same
float64 truth): 1e-12 relative leaves four orders over the round-off of the two
paths (the ODE route's two solves agree to ~1e-14).
"""

import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

if os.environ.get("CI"):
    import jax  # CI installs the test extra, which holds JAX: a missing JAX is a failure there
else:
    jax = pytest.importorskip("jax", reason="JAX is not installed (pip install -e \".[jax]\")")
import jax.numpy as jnp  # noqa: E402

from mfverify.cases import get_case  # noqa: E402
from mfverify.check.exact_network import ExactNetwork  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 arrays on the JAX side, to compare at 1e-12

CASES = ("gauss2d_aniso", "bimodal1d", "ring8", "wide2d")
RTOL = 1e-12


def _points(mixture, n, seed):
    g = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.95 * torch.rand(n, generator=g, dtype=torch.float64)
    r = t * torch.rand(n, generator=g, dtype=torch.float64)
    x = (1 - t[:, None]) * mixture.sample(n, generator=g) + t[:, None] * torch.randn(n, mixture.d, generator=g,
                                                                                     dtype=torch.float64)
    v = torch.randn(n, mixture.d, generator=g, dtype=torch.float64)
    return x, r, t, v


def _rel(a, b):
    b = b.detach().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1.0))


@given(case=st.sampled_from(CASES), seed=st.integers(0, 10_000))
def test_values_and_jvps_equal_the_torch_exact_model_inside_and_outside_jit(case, seed):
    from mfverify.jax import exact_model

    mixture = get_case(case)
    apply, params, _ = exact_model(mixture)
    x, r, t, v = _points(mixture, 4, seed)
    net = ExactNetwork(mixture)
    u_torch, du_torch = torch.func.jvp(net, (x, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    X, R, T, V = (jnp.asarray(a.numpy()) for a in (x, r, t, v))
    f = lambda a, b, c: apply(params, a, b, c)  # noqa: E731
    tangent = (V, jnp.zeros_like(R), jnp.ones_like(T))
    u, du = jax.jvp(f, (X, R, T), tangent)
    uj, duj = jax.jit(lambda a, b, c: jax.jvp(f, (a, b, c), tangent))(X, R, T)
    for got in (u, uj):
        assert _rel(got, u_torch) <= RTOL
    for got in (du, duj):
        assert _rel(got, du_torch) <= RTOL


def test_grad_vmap_linearize_dtypes_shapes_and_conventions():
    from mfverify.jax import exact_model

    mixture = get_case("ring8")
    apply, params, calls = exact_model(mixture)
    x, r, t, v = _points(mixture, 5, 1)
    X, R, T, V = (jnp.asarray(a.numpy()) for a in (x, r, t, v))
    u_torch = ExactNetwork(mixture)(x, r, t).detach()
    # the eps gradient of a loss is the directional derivative sum 2 (u - y) . h_j
    y = jnp.ones_like(X)
    g = jax.grad(lambda p: jnp.sum((apply(p, X, R, T) - y) ** 2))(params)["eps"]
    g_jit = jax.jit(jax.grad(lambda p: jnp.sum((apply(p, X, R, T) - y) ** 2)))(params)["eps"]
    wavy = ExactNetwork(mixture)._smooth[1](x, r, t).detach().numpy()  # the torch battery's wavy direction
    assert _rel(g[0], np.sum(2 * (u_torch.numpy() - 1.0) * wavy)) <= 1e-10
    assert _rel(g_jit, np.asarray(g)) <= 1e-14
    uv = jax.vmap(lambda a, b, c: apply(params, a[None], b[None], c[None])[0])(X, R, T)
    assert _rel(uv, u_torch) <= RTOL
    _, lin = jax.linearize(lambda a: apply(params, a, R, T), X)
    _, du = jax.jvp(lambda a: apply(params, a, R, T), (X,), (V,))
    assert _rel(lin(V), np.asarray(du)) <= 1e-14
    u32 = apply(params, X.astype(jnp.float32), R.astype(jnp.float32), T.astype(jnp.float32))
    assert u32.dtype == jnp.float32 and _rel(u32, u_torch) <= 1e-5  # float32's rounding of inputs and output
    assert _rel(apply(params, X, R[:, None], T[:, None]), u_torch) <= RTOL  # times as (B, 1)
    reversed_apply, p2, _ = exact_model(mixture, inputs="x,t,h")
    assert _rel(reversed_apply(p2, X, T, T - R), u_torch) <= RTOL
    assert calls.summary()["calls"] > 0


def test_labels_reach_the_class_fields():
    from mfverify.jax import exact_model

    mixture = get_case("ring8_two_classes")
    apply, params, _ = exact_model(mixture)
    x, r, t, _ = _points(mixture, 4, 2)
    labels = torch.tensor([0, 1, 2, 1])  # 2: the null label
    u_torch = ExactNetwork(mixture)(x, r, t, labels=labels).detach()
    u = apply(params, *(jnp.asarray(a.numpy()) for a in (x, r, t)), labels=jnp.asarray(labels.numpy()))
    assert _rel(u, u_torch) <= RTOL


def test_a_missing_jax_names_the_extra(monkeypatch):
    import sys

    from mfverify.check import jax_model

    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match=r'pip install -e "\.\[jax\]"'):
        jax_model.exact_model("ring8")


# ------------------------------------------------------------------ the as-written battery with --framework jax


def meanflow_jax(apply, params, x0, key, tangent_t=1.0, stop_gradient=True):
    """MeanFlow as the official JAX code writes it: logit-normal times sorted, a quarter of the batch
    at r != t, ``jax.jvp`` along ``(v, 0, 1)``, ``stop_gradient``, a batch mean."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    n = x0.shape[0]
    a, b = (jax.nn.sigmoid(-0.4 + jax.random.normal(k, (n,), x0.dtype)) for k in (k1, k2))
    t, r = jnp.maximum(a, b), jnp.minimum(a, b)
    r = jnp.where(jax.random.uniform(k3, (n,)) < 0.25, r, t)
    e = jax.random.normal(k4, x0.shape, x0.dtype)
    z = (1 - t[:, None]) * x0 + t[:, None] * e
    v = e - x0
    u, dudt = jax.jvp(lambda z_, r_, t_: apply(params, z_, r_, t_), (z, r, t),
                      (v, jnp.zeros_like(r), jnp.full_like(t, tangent_t)))
    target = v - (t - r)[:, None] * dudt
    if stop_gradient:
        target = jax.lax.stop_gradient(target)
    return jnp.mean(jnp.sum((u - target) ** 2, axis=1))


_JITTED = {}


def meanflow_jax_jit(apply, params, x0, key):
    """The same under ``jax.jit`` (compiled once per exact model)."""
    if apply not in _JITTED:
        _JITTED[apply] = jax.jit(lambda p, x, k: meanflow_jax(apply, p, x, k))
    return _JITTED[apply](params, x0, key)


def wrong_tangent_jax(apply, params, x0, key):
    return meanflow_jax(apply, params, x0, key, tangent_t=0.0)


def no_stop_gradient_jax(apply, params, x0, key):
    return meanflow_jax(apply, params, x0, key, stop_gradient=False)


def vector_jax(apply, params, x0, key):
    return jnp.sum(apply(params, x0, 0.5, 0.5), axis=1)


def nan_jax(apply, params, x0, key):
    return jnp.sum(apply(params, x0, 0.5, 0.5)) * jnp.nan


def other_arguments_jax(apply, params, x0):
    return jnp.sum(apply(params, x0, 0.5, 0.5))


@pytest.mark.parametrize("name, passes", [("meanflow_jax", True), ("meanflow_jax_jit", True),
                                          ("wrong_tangent_jax", False), ("no_stop_gradient_jax", False)])
def test_jax_losses_as_written(name, passes, capsys):
    from mfverify.check import main

    rc = main(["--as-written", f"tests.jax_checks:{name}", "--framework", "jax", "--cases", "bimodal1d",
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == (0 if passes else 1), out
    if not passes:
        assert "not a stationary point" in out


@pytest.mark.parametrize("name, message", [("vector_jax", "expected a scalar"), ("nan_jax", "non-finite"),
                                           ("other_arguments_jax", "must take (apply, params, x0, key)")])
def test_bad_jax_losses_are_usage_errors(name, message, capsys):
    from mfverify.check import main

    rc = main(["--as-written", f"tests.jax_checks:{name}", "--framework", "jax", "--cases", "bimodal1d",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
