"""``mfverify COMMAND ...`` (also ``python -m mfverify COMMAND ...``): every tool of mfverify."""

from __future__ import annotations

import sys

# command -> (module with main(argv), what it does)
COMMANDS = {
    "study": ("mfverify.study.__main__", "run a study (objectives_compare, claims, ...): tables, figures, summary"),
    "check": ("mfverify.check", "check a loss: per sample (LOSS) or as written (--as-written MODULE:FN)"),
    "stability": ("mfverify.theory.stability", "the stability table of the stationary point (claim C12)"),
    "cases": ("mfverify.cases.cli", "list the named cases (mixtures with exact ground truth): d, components, labels"),
    "figures": ("mfverify.study.figures", "redraw every figure of a finished study folder"),
    "claims": ("mfverify.study.claims", "recompute claims.csv and claims.md of a finished claims study"),
    "headlines": ("mfverify.study.headlines", "the headline numbers of a finished relatives_compare study"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: mfverify COMMAND [options]   (mfverify COMMAND --help: its options and defaults)", "",
             "commands:"]
    lines += [f"  {name:{width}s}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(usage(), file=sys.stderr)
        print(f"error: unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    import importlib
    import os

    # as `python -m` does: a user's own module in the current folder ("mymod:loss") can be named
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:], prog=f"mfverify {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
