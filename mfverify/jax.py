"""Public path: ``mfverify.jax`` is the module ``mfverify.check.jax_model`` (the same object): the
exact model as a JAX function (``exact_model``); needs the extra ``pip install -e ".[jax]"``."""

import sys

from mfverify.check import jax_model as _module

sys.modules[__name__] = _module
