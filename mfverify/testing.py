"""Public path kept: ``mfverify.testing`` is the module ``mfverify.check.testing`` (the same object)."""

import sys

from mfverify.check import testing as _module

sys.modules[__name__] = _module
