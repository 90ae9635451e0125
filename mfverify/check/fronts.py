"""The as-written battery's two fronts: how a batch is drawn, how a loss is called, how its
return value is read, in torch (``fn(model, x0)``) and in JAX (``fn(apply, params, x0, key)``).

One batch of a case gives ``d loss / d eps`` (J,) at the model's ``offset`` (zero: at ``u*``).
Both fronts draw the data the same way (``draw``: ``x0 ~ p0`` and, on a labelled case, its
labels, from a generator of seed ``2 seed + 1``; an image case's rows shaped ``(B, C, H, W)``),
read a return value the same way (``loss_value``: a scalar, or a tuple/list whose first item
is, or a dict whose ``"loss"`` is), and turn any failure of the user's code into a
``LossError`` (a usage error, never a traceback). The loss's own randomness: torch's global
generator seeded ``2 seed`` (torch), a ``jax.random`` key of ``2 seed`` (JAX).

``arity(fn, mixtures, framework)`` says whether the loss takes the labels.
"""

from __future__ import annotations

import inspect
import math
import random

import torch

from mfverify.check.exact_network import ExactNetwork
from mfverify.check.report import LossError, user_code

__all__ = ["draw", "loss_value", "arity", "TorchFront", "JaxFront", "FRONTS"]


def draw(mixture, n: int, seed: int, labelled: bool):
    """``(x0 (n, d) float64, labels (n,) or None)``: a batch of the case's data."""
    g = torch.Generator().manual_seed(2 * seed + 1)
    if labelled:
        return mixture.sample_labelled(n, generator=g)
    return mixture.sample(n, generator=g), None


def shaped(x0, mixture, layout: str, xp=torch):
    """A batch of rows ``(n, d)`` as the loss gets it: on an image case ``(n, C, H, W)`` (NCHW), ``(n, H, W, C)``
    (NHWC) or the rows (flat); else ``(n, d)``."""
    shape = getattr(mixture, "shape", None)
    if not shape or len(shape) != 3 or layout == "flat":
        return x0
    n, (C, H, W) = x0.shape[0], shape
    images = x0.reshape(n, C, H, W)
    if layout == "NHWC":
        return images.permute(0, 2, 3, 1) if xp is torch else xp.transpose(images, (0, 2, 3, 1))
    return images


def loss_value(out, is_array, shape_of, describe):
    """The scalar a loss returned: ``out`` itself, the first item of a tuple/list, or a dict's
    ``"loss"``; ``is_array(v)`` says whether ``v`` is the framework's array, ``shape_of(v)`` its shape,
    ``describe(v)`` its type for messages."""
    what = type(out).__name__
    if isinstance(out, dict):
        if "loss" not in out:
            raise LossError(f"the loss returned a dict without a 'loss' entry (keys {sorted(out)})")
        out = out["loss"]
    elif isinstance(out, (tuple, list)):
        if not out:
            raise LossError(f"the loss returned an empty {what}")
        out = out[0]
    if not is_array(out):
        raise LossError(f"the loss returned {describe(out)}; expected a scalar (or a tuple/dict holding one)")
    if math.prod(tuple(shape_of(out))) != 1:
        raise LossError(f"the loss returned an array of shape {tuple(shape_of(out))}; expected a scalar (the batch "
                        "mean; a per-sample loss goes through mfverify check LOSS)")
    return out


class Unseeded:
    """Notices draws from the global generators mfverify does not seed (numpy's and Python's
    ``random``): a run of such a loss cannot be repeated bit for bit. ``found``: their names."""

    def __init__(self):
        self.found: set = set()

    def __enter__(self):
        import numpy as np

        self._np, self._py = np.random.get_state()[1].copy(), random.getstate()
        self._np_pos = np.random.get_state()[2]
        return self

    def __exit__(self, *exc):
        import numpy as np

        state = np.random.get_state()
        if state[2] != self._np_pos or not np.array_equal(state[1], self._np):
            self.found.add("numpy.random")
        if random.getstate() != self._py:
            self.found.add("random")
        return False


def _no_calls(model, before: int) -> bool:
    return len(model.calls.r) == before


class TorchFront:
    """``fn(model, x0)`` (``fn(model, x0, labels)``) with ``model`` an ``ExactNetwork``."""

    name = "torch"
    signature = (("model", "x0"), ("model", "x0", "labels"))

    def __init__(self):
        self.unseeded = Unseeded()

    def model(self, mixture, inputs: str, seed: int, layout: str = "NCHW", **route):
        return ExactNetwork(mixture, inputs=inputs, seed=seed, layout=layout, **route)

    def batch(self, fn, model, mixture, n, dtype, seed, takes_labels) -> torch.Tensor:
        """``d loss / d eps`` (J,) on one batch of the loss's own randomness (seeded). The data and
        the loss draw from generators of different seeds: two generators of one seed give the
        same stream, and a loss's times would then be a function of its data."""
        x0, labels = draw(mixture, n, seed, takes_labels)
        args = (shaped(x0.to(dtype), mixture, model.layout),) + ((labels,) if takes_labels else ())
        torch.manual_seed(2 * seed)
        model.eps.grad = None
        before = len(model.calls.r)
        with self.unseeded:
            out = user_code(lambda: fn(model, *args))
        loss = loss_value(out, lambda v: isinstance(v, torch.Tensor), lambda v: v.shape,
                          lambda v: type(v).__name__)
        if not loss.dtype.is_floating_point:
            raise LossError(f"the loss returned a {loss.dtype} tensor; expected a floating-point scalar")
        if not torch.isfinite(loss.detach()).all():
            raise LossError("the loss returned a non-finite value at the exact model on the case's data")
        if _no_calls(model, before):
            raise LossError("the loss never calls the model it is given (fn(model, x0) must evaluate model(x, r, t) "
                            "on its batch)")
        if not loss.requires_grad:
            frozen = [p for p in model.parameters() if not p.requires_grad]
            if frozen:
                raise LossError("the exact model's parameters eps have requires_grad=False: the loss (or a copy it "
                                "made, such as an EMA) switched them off, so the loss cannot be differentiated "
                                "with respect to them")
            raise LossError("the loss calls the model but its value does not depend on the model's output: the "
                            "calls are under torch.no_grad(), or their outputs are detached")
        try:
            loss.reshape(()).backward()
        except Exception as err:
            raise LossError(f"backward through the loss failed: {type(err).__name__}: {err}") from err
        grad = model.eps.grad
        if grad is None:  # every output of the model depends on eps: none reached the loss's value
            raise LossError("the loss calls the model but its value does not depend on the model's output: the "
                            "calls are under torch.no_grad(), or their outputs are detached")
        return grad.detach().clone()


class _Untraceable(Exception):
    """The loss needs concrete values (``float(x)``, numpy on an array, ``if`` on a value): run eagerly."""


class _JaxModel:
    """``mfverify.jax``'s exact model with the bookkeeping of an ``ExactNetwork`` (``offset``: the
    ``eps`` the batches are differentiated at) and the loss's gradient compiled once (``step``)."""

    def __init__(self, case, inputs, seed, layout, route):
        from mfverify.check.jax_model import JaxExactModel

        self.apply = JaxExactModel(case, inputs=inputs, seed=seed, layout=layout, **route)
        self.layout = layout
        self.params, self.calls = self.apply.params, self.apply.calls
        self.n_smooth, self.direction_names = self.apply.n_smooth, self.apply.direction_names
        self.cells, self.grid, self.decisive = self.apply.cells, self.apply.grid, self.apply.decisive
        self.offset = torch.zeros(len(self.direction_names), dtype=torch.float64)
        self.step = None  # jax.jit of the loss's value and gradient, or False once it cannot be traced


class JaxFront:
    """``fn(apply, params, x0, key)`` (``fn(apply, params, x0, labels, key)``), differentiated by
    ``jax.grad``, compiled with ``jax.jit`` once per exact model (``jit=False``, or a loss that
    cannot be traced: op by op)."""

    name = "jax"
    signature = (("apply", "params", "x0", "key"), ("apply", "params", "x0", "labels", "key"))

    def __init__(self, jit: bool = True):
        self.jit = jit
        self.unseeded = Unseeded()

    def model(self, mixture, inputs: str, seed: int, layout: str = "NHWC", **route):
        return _JaxModel(mixture, inputs, seed, layout, route)

    def batch(self, fn, model, mixture, n, dtype, seed, takes_labels) -> torch.Tensor:
        import jax
        import jax.numpy as jnp
        import numpy as np

        x0, labels = draw(mixture, n, seed, takes_labels)
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        rows = shaped(x0, mixture, model.layout)  # the case's images in the loss's layout (flax's: NHWC)
        data = (jnp.asarray(rows.numpy().astype(np_dtype)),) + ((jnp.asarray(labels.numpy()),) if takes_labels else ())
        key = jax.random.PRNGKey(2 * seed)
        params = {"eps": jnp.asarray(model.offset.numpy()).astype(model.params["eps"].dtype)}
        untraceable = (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                       jax.errors.TracerIntegerConversionError)

        def scalar(p, data, key, traced):
            try:
                out = user_code(lambda: fn(model.apply, p, *data, key), passthrough=untraceable if traced else ())
            except untraceable as err:  # traced: the loss cannot be compiled, so it runs op by op
                raise _Untraceable from err
            out = loss_value(out, lambda v: hasattr(v, "shape") and hasattr(v, "dtype"), lambda v: v.shape,
                             lambda v: type(v).__name__)
            if not jnp.issubdtype(out.dtype, jnp.floating):
                raise LossError(f"the loss returned a {out.dtype} array; expected a floating-point scalar")
            return out.reshape(())

        if not self.jit:
            model.step = False
        if model.step is None:
            model.step = jax.jit(jax.value_and_grad(lambda p, data, key: scalar(p, data, key, True)))
        value = grad = None
        before = len(model.calls.r)
        with self.unseeded:  # under jit a draw from numpy happens once, at tracing: still a draw
            if model.step is not False:
                try:
                    value, grad = model.step(params, data, key)
                except _Untraceable:
                    model.step = False
            if model.step is False:
                value, grad = jax.value_and_grad(lambda p: scalar(p, data, key, False))(params)
        if _no_calls(model, before):
            raise LossError("the loss never calls the model it is given (fn(apply, params, x0, key) must evaluate "
                            "apply(params, x, r, t) on its batch)")
        if not np.isfinite(float(value)):
            raise LossError("the loss returned a non-finite value at the exact model on the case's data")
        return torch.from_numpy(np.asarray(grad["eps"], dtype=np.float64).copy())


FRONTS = {"torch": TorchFront, "jax": JaxFront}


def _binds(fn, names) -> bool:
    try:
        inspect.signature(fn).bind(*names)
        return True
    except (TypeError, ValueError):
        return False


def labels_only(fn, front) -> bool:
    """Whether ``fn`` takes the labels and cannot be called without them."""
    plain, labelled_args = front.signature
    return _binds(fn, labelled_args) and not _binds(fn, plain)


def arity(fn, mixtures, front) -> bool:
    """Whether ``fn`` takes the labels (``front.signature``: without and with them)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False

    def binds(*args):
        try:
            sig.bind(*args)
            return True
        except TypeError:
            return False

    plain, labelled_args = front.signature
    two, three = binds(*plain), binds(*labelled_args)
    labelled = all(getattr(m, "labels", None) is not None for m in mixtures)
    if three and not two:
        if not labelled:
            raise ValueError(f"the loss takes ({', '.join(labelled_args)}), but not every case is labelled; give "
                             "labelled cases (e.g. ring8_labelled)")
        return True
    if two:
        return False
    raise TypeError(f"the loss must take ({', '.join(plain)}) or ({', '.join(labelled_args)}); its signature is "
                    f"{sig}")
