"""``python -m mfverify.check LOSS ...`` (the same as ``mfverify check LOSS ...``)."""

import sys

from mfverify.check.cli import main

sys.exit(main())
