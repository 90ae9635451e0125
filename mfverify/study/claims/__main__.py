"""``python -m mfverify.study.claims DIR``: recompute claims.csv and claims.md of a finished folder."""

from mfverify.study.claims import main

raise SystemExit(main())
