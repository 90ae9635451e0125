"""Validation of the truth functions' inputs: one place, one set of messages."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from mfverify.cases import GaussianMixture, LowRankMixture, ProductMixture

# Default ODE tolerances. Local error control lets the global error exceed the
# tolerance by up to ~300x on rare points (ring8, full interval: 3e-9 at 1e-11),
# so the default is 1e-12: benchmarks/truth_bench.py measures max |u - u_tight|
# over 100k points against this bar of 1e-9.
DEFAULT_RTOL = 1e-12
DEFAULT_ATOL = 1e-12


def _check_tolerance(name, value, default):
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not (0 < value < 1):
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return float(value)


def as_points(x, d: int, name: str = "x") -> torch.Tensor:
    """``x`` as an (n, d) float64 tensor on its own device (CPU for numpy)."""
    if isinstance(x, torch.Tensor):
        if x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
        x = x.detach().to(torch.float64)
    elif isinstance(x, (np.ndarray, list, tuple)):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be numeric") from err
    else:
        raise TypeError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}) for this mixture, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, found {x[~torch.isfinite(x)][0].item()}")
    return x


def as_times(value, n: int, device, name: str) -> torch.Tensor:
    """A float or an (n,) array as an (n,) float64 tensor in [0, 1]."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a float or an (n,) tensor, got bool")
    if isinstance(value, numbers.Real):
        tensor = torch.full((n,), float(value), dtype=torch.float64, device=device)
    elif isinstance(value, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(value).detach().to(device=device, dtype=torch.float64)
        if tensor.ndim == 0:
            tensor = tensor.expand(n).clone()
        elif tensor.shape != (n,):
            raise ValueError(f"{name} must be a float or have shape ({n},), got {tuple(tensor.shape)}")
    else:
        raise TypeError(f"{name} must be a float or an (n,) tensor, got {type(value).__name__}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite, found {tensor[~torch.isfinite(tensor)][0].item()}")
    outside = (tensor < 0) | (tensor > 1)
    if outside.any():
        raise ValueError(f"{name} must lie in [0, 1], found {tensor[outside][0].item()!r}")
    return tensor


def check_mixture(mixture) -> None:
    if not isinstance(mixture, (GaussianMixture, ProductMixture, LowRankMixture)):
        raise TypeError(f"mixture must be a GaussianMixture, ProductMixture or LowRankMixture, got "
                        f"{type(mixture).__name__}")


def prepare(mixture, x, t, r=None, need_density: bool = False):
    """Validated ``(x (n, d), t (n,), r (n,) or None)`` on x's device.

    ``need_density``: the caller evaluates ``p_t`` (velocity, score, ...) at t,
    which a mixture with a singular covariance does not have at t = 0.
    """
    check_mixture(mixture)
    x = as_points(x, mixture.d)
    n = x.shape[0]
    t = as_times(t, n, x.device, "t")
    if r is not None:
        r = as_times(r, n, x.device, "r")
        bad = r > t
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"r must be <= t, found r={r[i].item()!r} > t={t[i].item()!r} at index {i}")
    if need_density and mixture.is_singular and bool((t == 0).any()):
        kind = "a Dirac mixture (covariances 0)" if mixture.is_dirac else "a mixture with a singular covariance"
        raise ValueError(
            f"t = 0 is not allowed for {kind}: p_0 has no density there, so the velocity, score "
            "and posterior at t = 0 are undefined"
        )
    return x, t, r


def jvp(f, primals, tangents):
    """``torch.func.jvp(f, primals, tangents)``, also inside a caller's ``forward_ad`` level.

    Forward-mode AD does not nest: where a dual level is open (a loss that takes its JVPs
    with ``torch.autograd.forward_ad`` calling the exact model), the same product comes
    from reverse mode, ``d/dw <vjp(w), tangent>`` (a double backward; exact, the same
    derivative). Elsewhere it is ``torch.func.jvp`` itself."""
    try:
        return torch.func.jvp(f, primals, tangents)
    except RuntimeError as err:
        if "Nested forward mode AD" not in str(err):
            raise
    with torch.enable_grad():
        inputs = [a.detach().requires_grad_() for a in primals]
        out = f(*inputs)
        w = torch.zeros_like(out, requires_grad=True)
        grads = torch.autograd.grad(out, inputs, w, create_graph=True, allow_unused=True)
        total = sum((g * dt).sum() for g, dt in zip(grads, tangents) if g is not None)
        (du,) = torch.autograd.grad(total, w, allow_unused=True)
    return out.detach(), (torch.zeros_like(out) if du is None else du.detach())
