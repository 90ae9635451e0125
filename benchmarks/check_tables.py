"""The per-sample battery's tables of ``docs/check_your_loss.md``: the built-in objectives, and the public
MeanFlow losses with the broken variants (``tests/public_losses.py``), each a row of numbers from
``mfverify.check.run``.

    python benchmarks/check_tables.py [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _g(x) -> str:
    """Two significant digits, without an exponent between 1e-3 and 1e4."""
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2g}"


def _cell(check, text) -> str:
    if check is None:
        return "—"
    if check.status == "insufficient":
        return f"undecided ({text})"
    return f"pass ({text})" if check.passed else f"**FAIL** ({text})"


def _stationary(check) -> str:
    d = check.details
    if d["route"] == "exact":
        return _cell(check, f"exact: {_g(check.value)}")
    return _cell(check, f"Monte Carlo: max z {check.value:.3g}; detectable move {_g(d['detectable_move'])}")


def builtins() -> None:
    from mfverify import check

    print("| objective | reduces_to_fm | stationary_at_exact_u (exact route) | trains_off_diagonal | "
          "weighting_moves_fixed_point (informational; max z on ring8 / gauss2d_aniso) | scm_relation | verdict | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("fm", "mf_full", "mf_sg", "mf", "mf_nosg", "shortcut", "scm"):
        start = time.perf_counter()
        report = check.run(name)
        wall = time.perf_counter() - start
        c = report.checks
        fm = c.get("reduces_to_fm")
        reduces = _cell(fm, f"factor {fm.details['factor']:g}") if fm else "not applicable (trained at r = 0 only)"
        off = c["trains_off_diagonal"]
        weighting = c.get("weighting_moves_fixed_point")
        if weighting is None:
            w = "— (takes no weighting)"
        else:
            z = weighting.details["per_case"]
            w = (f"{'pass' if weighting.passed else 'FAIL'} ({_g(z['ring8']['max_z'])} / "
                 f"{_g(z['gauss2d_aniso']['max_z'])})")
        scm = c.get("scm_relation")
        print(f"| {name} | {reduces} | {_stationary(c['stationary_at_exact_u'])} | "
              f"{'pass' if off.passed else '**FAIL** (the diagonal only)'} | {w} | "
              f"{_cell(scm, 'factor ' + format(scm.details['factor'], 'g')) if scm else '—'} | "
              f"{report.verdict} | {wall:.1f} |", flush=True)


def public() -> None:
    from mfverify import check

    import tests.public_losses as P

    rows = [("py_meanflow (`norm_p = 0`)", P.py_meanflow, {"norm_p": 0.0}),
            ("haidog_meanflow", P.haidog_meanflow, None),
            ("haidog_meanflow, not declared quadratic", P.haidog_meanflow_undeclared, None),
            ("reversed_meanflow (noise at 0)", P.reversed_meanflow, None),
            ("zhuyu_meanflow at `p = 0`", P.zhuyu_meanflow, None),
            ("tangent on the wrong time, `(v, 1, 0)` on `(x, r, t)`", P.declared(P.wrong_time_tangent), None),
            ("missing stop-gradient", P.declared(P.missing_stop_gradient), None),
            ("sign error, `v + (t - r) du/dt`", P.declared(P.sign_error), None),
            ("missing `(t - r)`", P.declared(P.missing_interval), None)]
    print("| loss | reduces_to_fm (factor; residual) | equivalent_to_reference `mf` (factor; residual) | "
          "stationary_at_exact_u (route: value) | verdict |")
    print("|---|---|---|---|---|")
    for label, loss, options in rows:
        report = check.run(loss, reference="mf", options=options, weighting=False)
        c = report.checks

        def pair(check):
            d = check.details
            residual = max(d.get("value_residual", check.value), d.get("gradient_residual", 0.0))
            return _cell(check, f"{d.get('factor', float('nan')):.2g}; {_g(residual)}")

        print(f"| {label} | {pair(c['reduces_to_fm'])} | {pair(c['equivalent_to_reference'])} | "
              f"{_stationary(c['stationary_at_exact_u'])} | {report.verdict} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tables", nargs="+", choices=("builtins", "public"), default=["builtins", "public"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for table in args.tables:
        (builtins if table == "builtins" else public)()
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
