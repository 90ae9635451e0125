"""Public path kept: ``mfverify.stability`` is the module ``mfverify.theory.stability`` (the same
object), and ``python -m mfverify.stability`` runs its command line."""

import sys

from mfverify.theory import stability as _module

if __name__ == "__main__":
    sys.exit(_module.main())
sys.modules[__name__] = _module
