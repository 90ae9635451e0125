"""The official JAX losses of ``tests/jax_losses.py`` (MeanFlow, improved MeanFlow, Shortcut models, written
in their repositories' style) through ``--as-written --framework jax`` on the default cases: the table of
``docs/check_your_loss.md``, "The official losses, as written".

    python benchmarks/check_official_jax.py [--threads 2] [--rows meanflow_official ...]

Needs ``pip install -e ".[jax]"``. Labelled losses run on the default labelled cases (``ring8_halves``,
``bimodal1d_labelled``), ``*_unlabelled`` ones on the four default cases.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (inputs, the setting in words)
ROWS = {
    "meanflow_official": ("x,t,h", "MeanFlow, the repository's defaults: `norm_p = 1`, `omega = 1`, `kappa = 0.5`, "
                                   "10 % dropout"),
    "meanflow_official_p0_guided": ("x,t,h", "MeanFlow, `norm_p = 0`, `kappa = 0.5` (guided: effective scale 2)"),
    "meanflow_official_p0_unguided": ("x,t,h", "MeanFlow, `norm_p = 0`, `kappa = 0` (unguided)"),
    "imf_official": ("x,t,h", "iMF, the repository's defaults: `norm_p = 1`, guidance scale drawn in [1, 8]"),
    "imf_official_w1_p0": ("x,t,h", "iMF, guidance scale 1, `norm_p = 0`"),
    "imf_official_unlabelled": ("x,t,h", "iMF, guidance scale 1, `norm_p = 0`, unlabelled, jitted"),
    "shortcut_official": ("reversed,t,h", "Shortcut, the repository's defaults: 128 steps, a bootstrap row in 8, "
                                          "EMA targets, ±4 clips"),
    "shortcut_official_8_steps": ("reversed,t,h", "Shortcut, `denoise_timesteps = 8`"),
    "shortcut_official_unlabelled": ("reversed,t,h", "Shortcut, unlabelled"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 truth on the host, as the CLI
    import tests.jax_losses as J
    from mfverify.check.as_written import run_as_written

    print("| loss | setting | verdict | max z per case (bar) | detectable move per case / shared | batches per case | "
          "wall s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.rows:
        inputs, setting = ROWS[name]
        start = time.perf_counter()
        report = run_as_written(getattr(J, name), name=name, framework="jax", inputs=inputs)
        wall = time.perf_counter() - start
        check = report.checks["stationary_as_written"]
        per = check.details["per_case"]
        zs = " / ".join(f"{max(v for k, v in d.items() if k.startswith('z_')):.3g}" for d in per.values())
        bar = min(d["bar"] for d in per.values())
        moves = " / ".join(f"{d['detectable_move']:.2g}" for d in per.values())
        shared = [c["detectable_move"] for c in check.details.get("combined", {}).values()]
        moves += f" / {max(shared):.2g}" if shared else ""
        failed = [k for k, c in report.checks.items() if c.status == "fail"]
        verdict = report.verdict + (f" ({', '.join(failed)})" if failed else "")
        print(f"| {name} | {setting} | {verdict} | {zs} ({bar:.3g}) | {moves} | "
              f"{' / '.join(str(b) for b in check.details['batches'].values())} | {wall:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
