"""Public path kept: ``mfverify.conventions`` is the module ``mfverify.check.conventions`` (the same object)."""

import sys

from mfverify.check import conventions as _module

sys.modules[__name__] = _module
