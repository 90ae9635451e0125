"""The study's figures and their tables: each figure is made from a small study, its
numbers are the models' and the truth's, and the figures redrawn from the CSVs alone
are the same files."""

import math
import shutil

import pytest
import torch

from mfverify import truth
from mfverify.cases import get_case
from mfverify.sample import average_velocity_sampler, uniform_grid
from mfverify.study import figures
from mfverify.study.config import EvalConfig, load_study
from mfverify.study.runner import run_study
from mfverify.study.store import field_grid_path, read_csv, run_dir, truth_path
from mfverify.study.tables import plotting_frame
from mfverify.train import load_checkpoint

SMALL = """
[study]
name = "figs"
cases = ["ring8", "random16d"]
objectives = ["fm", "mf", "scm"]
seeds = 2

[train]
steps = 15
batch = 32
device = "cpu"

[network_options.mlp]
width = 16
depth = 2

[eval]
nfe = [1, 2, 4]
sample_nfe = [1, 4]
n_noise = 96
w2_samples = 32
field_samples = 32
sample_points = 40
field_grid = 3
field_grid_samples = 12
"""

KINDS = ("error_vs_nfe", "samples", "field_error")


@pytest.fixture(scope="module")
def study_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("figs")
    (root / "figs.toml").write_text(SMALL)
    study = load_study(root / "figs.toml")
    return study, run_study(study, root / "out", progress=False)


def test_every_figure_is_made_with_its_table(study_out):
    _, out = study_out
    for case in ("ring8", "random16d"):
        for kind in KINDS:
            for ext in ("pdf", "png", "csv"):
                assert (out / f"{kind}_{case}.{ext}").stat().st_size > 0, f"{kind}_{case}.{ext}"
        assert (out / f"density_{case}.csv").stat().st_size > 0
    summary = (out / "summary.md").read_text()
    for case in ("ring8", "random16d"):
        for kind in KINDS:
            assert f"]({kind}_{case}.png)" in summary  # the summary embeds every PNG


def test_figures_redrawn_from_the_csvs_alone_are_the_same_files(study_out, tmp_path):
    """Only the CSVs are copied: no run, truth or config is there to read."""
    _, out = study_out
    for p in out.glob("*.csv"):
        if p.name not in ("results.csv", "runs.csv"):
            shutil.copy(p, tmp_path / p.name)
    assert figures.main([str(tmp_path)]) == 0
    for case in ("ring8", "random16d"):
        for kind in KINDS:
            for ext in ("png", "pdf"):
                name = f"{kind}_{case}.{ext}"
                assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_samples_table_holds_the_models_samples_and_the_exact_images(study_out):
    study, out = study_out
    k = study.eval.sample_points
    for case in ("ring8", "random16d"):
        mixture = get_case(case)
        origin, P, projection = plotting_frame(mixture)
        assert projection == ("identity" if mixture.d == 2 else "pca")
        x1 = torch.load(truth_path(out, case), weights_only=True)["x1"][:k]
        phi = truth.flow_map(mixture, x1, 1.0, 0.0)  # computed again here, not read from the study
        rows = read_csv(out / f"samples_{case}.csv")
        assert {(r["method"], int(r["nfe"])) for r in rows} >= {("mf", 1), ("mf", 4), ("exact_u", 1), ("fm_euler", 4)}
        assert {int(r["nfe"]) for r in rows if r["method"] == "scm"} == {1}  # trained at r = 0: NFE 1 only
        model = load_checkpoint(run_dir(out, case, "mf", 0) / "checkpoint.pt")[2]  # the EMA is evaluated
        with torch.no_grad():
            u = lambda x, r, t: model(x.float(), r.float(), t.float()).double()  # noqa: E731
            mine, _ = average_velocity_sampler(u, x1, uniform_grid(4))
        got = sorted((r for r in rows if r["method"] == "mf" and r["nfe"] == "4"), key=lambda r: int(r["i"]))
        assert len(got) == k
        xy = torch.tensor([[float(r["x"]), float(r["y"])] for r in got], dtype=torch.float64)
        pxy = torch.tensor([[float(r["phi_x"]), float(r["phi_y"])] for r in got], dtype=torch.float64)
        err = torch.tensor([float(r["error"]) for r in got], dtype=torch.float64)
        # float32 network: the same arithmetic, so equal to float32 round-off of the samples
        assert torch.allclose(xy, (mine - origin) @ P, rtol=0, atol=1e-5)
        assert torch.allclose(pxy, (phi - origin) @ P, rtol=0, atol=1e-9)  # the ODE solver's tolerance
        assert torch.allclose(err, (mine - phi).norm(dim=1), rtol=1e-5, atol=1e-5)
        exact = [float(r["error"]) for r in rows if r["method"] == "exact_u"]
        assert max(exact) < 1e-8  # the exact average velocity lands on Phi at every NFE


def test_plotting_frame_is_the_leading_principal_plane():
    for case in ("random16d", "product8d"):
        mixture = get_case(case)
        origin, P, projection = plotting_frame(mixture)
        x = mixture.sample(200000, generator=torch.Generator().manual_seed(0))
        cov = torch.cov(x.T)
        assert torch.allclose(P.T @ P, torch.eye(2, dtype=torch.float64), atol=1e-12)
        if projection == "pca":  # centred on the data mean (4.5 standard errors of a 2e5-sample mean)
            assert torch.allclose(origin, x.mean(0), atol=0.01 * x.std(0).max().item())
        else:  # a product mixture: two of its own coordinates, uncentred
            assert projection == "coordinates" and (origin == 0).all() and set(P.sum(0).tolist()) == {1.0}
        var = torch.linalg.eigvalsh(cov)
        # the variance captured by P is the top two eigenvalues' (Monte Carlo: 5 % from 2e5 samples)
        assert (P.T @ cov @ P).trace() == pytest.approx((var[-1] + var[-2]).item(), rel=0.05)


def test_density_table_is_the_mixture_density(study_out):
    _, out = study_out
    mixture = get_case("ring8")
    rows = [r for r in read_csv(out / "density_ring8.csv") if r["kind"] == "grid"]
    pts = torch.tensor([[float(r["x"]), float(r["y"])] for r in rows[::97]], dtype=torch.float64)
    got = torch.tensor([float(r["value"]) for r in rows[::97]], dtype=torch.float64)
    assert torch.allclose(got, truth.log_density(mixture, pts, 0.0).exp(), rtol=1e-10, atol=1e-300)


def test_field_error_table_is_the_mean_over_seeds_of_the_models_error(study_out):
    study, out = study_out
    for case in ("ring8", "random16d"):
        mixture = get_case(case)
        grid = torch.load(field_grid_path(out, case), weights_only=True)
        rows = read_csv(out / f"field_error_{case}.csv")
        nodes = {(float(r["r"]), float(r["t"])) for r in rows if r["method"] == "mf"}
        assert nodes == set(EvalConfig(field_grid=3).field_nodes())
        assert {float(r["r"]) for r in rows if r["method"] == "scm"} == {0.0}  # trained at r = 0 only
        sel = (grid["r"] == 0) & (grid["t"] == 1)
        x, r, t = grid["x"][sel], grid["r"][sel], grid["t"][sel]
        u = truth.average_velocity(mixture, x, r, t)
        rel = []
        for seed in range(study.study.seeds):
            model = load_checkpoint(run_dir(out, case, "mf", seed) / "checkpoint.pt")[2]
            with torch.no_grad():
                e = (model(x.float(), r.float(), t.float()).double() - u).square().sum(1).mean()
            rel.append((e / u.square().sum(1).mean()).item())
        (row,) = [q for q in rows if q["method"] == "mf" and float(q["r"]) == 0 and float(q["t"]) == 1]
        assert int(row["seeds"]) == 2
        assert float(row["relative"]) == pytest.approx(sum(rel) / 2, rel=1e-6)  # float32 network outputs


def test_error_vs_nfe_table_is_the_results_over_seeds(study_out):
    _, out = study_out
    results = [r for r in read_csv(out / "results.csv") if r["metric"] == "flow_map_mean" and r["case"] == "ring8"]
    for row in read_csv(out / "error_vs_nfe_ring8.csv"):
        vals = [float(r["value"]) for r in results if r["method"] == row["method"] and r["nfe"] == row["nfe"]]
        assert float(row["mean"]) == pytest.approx(sum(vals) / len(vals), rel=1e-15)
        assert (float(row["min"]), float(row["max"]), int(row["seeds"])) == (min(vals), max(vals), len(vals))
        assert row["group"] == ("objective" if row["method"] in ("fm", "mf", "scm") else "baseline")


def test_every_method_has_its_own_colour_and_marker():
    names = [f"obj{i}" for i in range(12)]
    table = [{"method": m, "group": "objective", "source": "", "index": i} for i, m in enumerate(names)]
    table += [{"method": b, "group": "baseline", "source": s, "index": i} for i, (b, s) in
              enumerate([("exact_u", ""), ("exact_v_euler", ""), ("exact_v_heun", ""), ("fm_euler", "obj0"),
                         ("fm_heun", "obj0")])]
    style = figures.styles(table)
    combos = {(s["color"], s["marker"], s["linestyle"]) for s in style.values()}
    assert len(combos) == len(style) == 17
    assert style["fm_euler"]["color"] == style["obj0"]["color"]  # a model baseline wears its objective's colour


def test_figure_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        figures.main([str(tmp_path)])
    assert exc.value.code == 2
    assert "holds no figure tables" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        figures.main([str(tmp_path / "missing")])
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sample_nfe must be a subset of nfe"):
        EvalConfig(nfe=(1, 2), sample_nfe=(4,))
    with pytest.raises(ValueError, match="field_grid"):
        EvalConfig(field_grid=0)
    assert EvalConfig(nfe=(1, 2, 4, 8, 16)).figure_nfe() == (1, 2, 16)
    assert EvalConfig(nfe=(4, 8)).figure_nfe() == (4, 8)
    assert math.isclose(EvalConfig(field_grid=4).field_nodes()[-1][1], 1.0)


EXACT_ONLY = SMALL.replace('objectives = ["fm", "mf", "scm"]', 'objectives = ["fm"]\nbaselines = ["exact_u"]').replace(
    'cases = ["ring8", "random16d"]', 'cases = ["ring8"]').replace("seeds = 2", "seeds = 1")


def test_a_study_whose_only_baseline_is_exact_u_finishes_with_its_figures(tmp_path):
    """exact_u's errors are 0 or ~1e-13: nothing of it is above the log axis, and the study still draws."""
    (tmp_path / "s.toml").write_text(EXACT_ONLY)
    out = run_study(load_study(tmp_path / "s.toml"), tmp_path / "out", progress=False)
    assert (out / "summary.md").exists() and (out / "error_vs_nfe_ring8.png").stat().st_size > 0
    assert figures.main([str(out)]) == 0


def _table(tmp_path, name="error_vs_nfe_ring8.csv", text=None):
    rows = ["study,case,method,group,source,index,nfe,metric,mean,min,max,seeds",
            "s,ring8,fm,objective,,0,1,flow_map_mean,0.5,0.4,0.6,2",
            "s,ring8,fm,objective,,0,2,flow_map_mean,0.3,0.2,0.4,2",
            "s,ring8,mf,objective,,1,1,flow_map_mean,-0.01,-0.02,0.0,2",
            "s,ring8,mf,objective,,1,2,flow_map_mean,0.0,0.0,0.0,2"]
    (tmp_path / name).write_text(text if text is not None else "\n".join(rows) + "\n")
    return rows


def test_zero_and_negative_means_are_drawn_on_the_floor_and_said_so(tmp_path):
    _table(tmp_path)
    fig = figures.error_vs_nfe(read_csv(tmp_path / "error_vs_nfe_ring8.csv"))
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "mf (2 of 2 at or below the floor)" in labels
    floor = ax.get_ylim()[0]
    (mf_line,) = [line for line in ax.get_lines() if line.get_label().startswith("mf ")]
    assert list(mf_line.get_ydata()) == [floor, floor]  # on the axis, not vanished
    assert "floor" in ax.get_ylabel()


@pytest.mark.parametrize("edit, pattern", [
    (lambda rows: rows[:2] + [rows[2].rsplit(",", 3)[0]] + rows[3:], r"line 3 has 9 fields where the header has 12"),
    (lambda rows: [rows[0].replace(",mean,", ",average,")] + rows[1:], "column mean missing"),
    (lambda rows: rows[:3] + [rows[3].replace("-0.01", "oops")] + rows[4:], r"line 4, column mean: 'oops' is not a number"),
])
def test_a_corrupt_table_is_named_with_its_file_line_and_column(tmp_path, edit, pattern, capsys):
    rows = _table(tmp_path)
    _table(tmp_path, text="\n".join(edit(rows)) + "\n")
    with pytest.raises(SystemExit) as exc:
        figures.main([str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error_vs_nfe_ring8.csv" in err and __import__("re").search(pattern, err), err
    assert "Traceback" not in err


def test_a_file_is_not_called_a_missing_folder(tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    with pytest.raises(SystemExit):
        figures.main([str(f)])
    assert "is a file; expected a study's output folder" in capsys.readouterr().err


def test_an_empty_table_replaces_its_old_figure_with_one_that_says_so(tmp_path):
    _table(tmp_path)
    figures.build(tmp_path, formats=("png",))
    old = (tmp_path / "error_vs_nfe_ring8.png").read_bytes()
    _table(tmp_path, text="study,case,method,group,source,index,nfe,metric,mean,min,max,seeds\n")
    figures.build(tmp_path, formats=("png",))
    assert (tmp_path / "error_vs_nfe_ring8.png").read_bytes() != old


def test_a_users_copy_of_a_table_beside_the_study_is_not_drawn_over_their_files(tmp_path, capsys):
    _table(tmp_path)
    _table(tmp_path, name="error_vs_nfe_backup.csv")
    (tmp_path / "error_vs_nfe_backup.png").write_bytes(b"my own picture")
    assert figures.build(tmp_path, formats=("png",)) == [tmp_path / "error_vs_nfe_ring8"]
    assert (tmp_path / "error_vs_nfe_backup.png").read_bytes() == b"my own picture"
    assert "error_vs_nfe_backup.csv left alone" in capsys.readouterr().err


def test_every_figure_fits_a_double_column_at_print_size(study_out):
    """Issue 26: each PNG at its saved size (150 dpi) is at most 7 in wide and 9 in tall, and no visible
    text of any figure is below 6 pt; a grid with more methods than a page holds comes in parts."""
    import struct

    import matplotlib.text

    _, out = study_out
    pngs = sorted(out.glob("*.png"))
    assert pngs
    for png in pngs:
        width, height = struct.unpack(">II", png.read_bytes()[16:24])
        assert width <= figures.WIDTH * 150 and height <= figures.MAX_HEIGHT * 150, (png.name, width, height)
    assert (out / "samples_ring8_part2.png").exists()  # 8 methods (3 objectives, 5 baselines) > 5 rows
    for kind, path in figures.figure_tables(out):
        table = figures.read_table(path, kind)
        if kind == "error_vs_nfe":
            drawn = [figures.error_vs_nfe(table)]
        elif kind == "samples":
            drawn = figures.samples_parts(table, figures.read_table(path.with_name("density_" + path.name[8:]),
                                                                    "density"))
        else:
            drawn = figures.field_error_parts(table)
        for fig in drawn:
            fig.canvas.draw()
            sizes = [(t.get_fontsize(), t.get_text()) for t in fig.findobj(matplotlib.text.Text)
                     if t.get_visible() and t.get_text().strip()]
            smallest = min(sizes)
            assert smallest[0] >= figures.MIN_FONT, (path.name, smallest)
            figures.plt.close(fig)
