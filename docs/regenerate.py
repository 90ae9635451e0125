"""Regenerate every committed number and figure under ``docs/`` from the studies that produce them.

    python docs/regenerate.py [--only claims objectives_compare ...] [--jobs 2] [--work runs/docs]

Each study runs at its ``default`` preset into ``WORK/NAME`` (an interrupted regeneration
resumes: finished runs are kept), then its generated files are copied into ``docs/``
(each names, under its title, the command, mfverify's commit and the date it came
from). Hand-written documents (``MATH.md``, ``stability.md``, ``check_your_loss.md``,
``oracles_compare/attribution.md``, ...) quote numbers but are not rewritten.

Wall time on 2 CPU cores with ``--jobs 2``: objectives_compare 462 s and claims 1518 s (measured
2026-12-04), oracles_compare 596 s (measured 2026-12-04);
relatives_guided 309 s, relatives_compare 886 s, images_compare 2599 s (U-Nets on digits; measured
2026-12-04); the whole set about 2 h. On a machine with a GPU every study is faster with
``--device cuda``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent

# study -> (folder under docs/, {generated file or glob: name in docs (None: the same)})
STUDIES = {
    "objectives_compare": (".", {"summary.md": "objectives_compare_default_summary.md", "*.png": None}),
    "claims": ("claims", {"claims.csv": None, "claims.md": None, "summary.md": None, "*.png": None}),
    "oracles_compare": ("oracles_compare", {"summary.md": None, "*.png": None}),
    "relatives_guided": ("relatives_guided", {"summary.md": None, "*.png": None}),
    "relatives_compare": ("relatives_compare", {"summary.md": None, "headlines.csv": None, "headlines.md": None,
                                                "*.png": None}),
    "images_compare": ("images_compare", {"summary.md": None, "claims.csv": None, "claims.md": None, "*.png": None}),
}


def run(command: list[str]) -> None:
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(STUDIES), help="these studies (default: every one)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel runs per study (default 2)")
    parser.add_argument("--work", default="runs/docs", help="where the studies run (default runs/docs)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the studies' device")
    args = parser.parse_args(argv)
    names = args.only or list(STUDIES)
    if "relatives_compare" in names and "relatives_guided" not in names:
        names.insert(names.index("relatives_compare"), "relatives_guided")  # the headlines read both
    work = Path(args.work)
    for name in names:
        start = time.perf_counter()
        out = work / name
        command = [sys.executable, "-m", "mfverify", "study", name, "--preset", "default", "--jobs", str(args.jobs),
                   "--no-progress"] + (["--device", args.device] if args.device else [])
        run(command + (["--resume", str(out)] if (out / "config.toml").exists() else ["--out", str(out)]))
        if name == "relatives_compare":
            run([sys.executable, "-m", "mfverify", "headlines", str(out), "--guided", str(work / "relatives_guided")])
        folder, files = STUDIES[name]
        dest = DOCS / folder
        for pattern, rename in files.items():
            for path in sorted(out.glob(pattern)):
                shutil.copyfile(path, dest / (rename or path.name))
        print(f"{name}: {time.perf_counter() - start:.0f} s; copied into {dest}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
