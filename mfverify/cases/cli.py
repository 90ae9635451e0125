"""``mfverify cases``: the named cases (built-in and registered through the ``mfverify.cases`` entry
points), one line each: name, dimension, components, classes, image shape and description."""

from __future__ import annotations

import argparse
import sys

from mfverify.cases.named import get_case, list_cases


def rows() -> list[dict]:
    """One dict per case: ``name, d, components, classes, shape, description``."""
    out = []
    for name, description in list_cases().items():
        mixture = get_case(name)
        labels = getattr(mixture, "labels", None)
        shape = getattr(mixture, "shape", None)
        out.append({"name": name, "d": mixture.d, "components": getattr(mixture, "K", None),
                    "classes": 0 if labels is None else int(getattr(mixture, "n_classes", 0)),
                    "shape": "x".join(map(str, shape)) if shape else "", "description": description or ""})
    return out


def main(argv=None, prog: str = "mfverify cases") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="List the named cases: mixtures whose velocity, "
                                     "average velocity and flow map mfverify knows exactly. A case is named in "
                                     "studies (cases = [...]) and in mfverify check --cases.")
    parser.parse_args(argv)
    table = rows()
    width = max(len(r["name"]) for r in table)
    print(f"{'name':{width}s}  {'d':>5s}  {'K':>3s}  classes  image     description")
    for r in table:
        k = "-" if r["components"] is None else str(r["components"])
        c = str(r["classes"]) if r["classes"] else "-"
        print(f"{r['name']:{width}s}  {r['d']:5d}  {k:>3s}  {c:>7s}  {r['shape'] or '-':8s}  {r['description']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
