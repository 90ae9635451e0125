"""Training objectives, per sample: ``loss = objective(model, x0, x1, r, t, **options)``.

``core``: the ``Objective`` (a loss and its properties), the registry (``get``,
``register``, ``names``) and the building blocks of a loss on the path; ``builtin``:
the seven of MATH.md §4; ``relatives``, ``oracles``, ``ablations``: MeanFlow's
relatives (§9), the oracle objectives that take the exact mixture (§8) and the
paper's ablations, each registered through mfverify's own entry points as an
outside package would be. A new family of objectives is a module here.

Imports: ``mfverify.jvp``, ``mfverify.registry`` and (the oracles, the control
variate's optimum) ``mfverify.truth``; never a network, a training loop or a study.
"""

from mfverify.objectives import builtin as _builtin  # noqa: F401  (registers the seven)
from mfverify.objectives.core import Objective, check_batch, check_batch_values, get, names, register, registry

__all__ = ["Objective", "register", "get", "names", "registry", "check_batch", "check_batch_values"]
