"""``mfverify check LOSS ...`` and ``mfverify study NAME ...`` (also ``python -m mfverify ...``)."""

from __future__ import annotations

import sys

COMMANDS = {"check": "mfverify.check", "study": "mfverify.study.__main__"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        known = ", ".join(COMMANDS)
        print(f"usage: mfverify {{{known}}} ...   (mfverify COMMAND --help for its options)", file=sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; commands: {known}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    import importlib
    import os

    # as `python -m` does: a user's own module in the current folder ("mymod:loss") can be named
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(COMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
