"""Registries (mfverify.registry): decorator, names, 'module:attr' strings, entry points,
and an outside objective through a whole study (forked and spawned workers)."""

import csv
import importlib
import sys
import textwrap

import pytest
import torch

from mfverify import objectives
from mfverify.cases import cases, get_case, list_cases
from mfverify.nets import build_network, networks
from mfverify.registry import Registry
from mfverify.study.__main__ import main as study_main
from mfverify.study.config import load_study, with_objectives
from mfverify.study.runner import run_study

from .test_study import TINY


def test_register_get_names_and_unknown_names():
    reg = Registry("widget", group=None)

    @reg.register("a")
    def a():
        return 1

    reg.register("b", lambda: 2)
    assert reg.names() == ["a", "b"] and reg.get("a") is a
    with pytest.raises(ValueError, match="unknown widget 'c'; known widgets: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="registered already"):
        reg.register("a", lambda: 3)
    with pytest.raises(ValueError, match="without ':'"):
        reg.register("x:y", lambda: 3)
    with pytest.raises(TypeError, match="given by name"):
        reg.get(3)
    assert reg.get("tests.test_registry:_five") == 5  # a module:attr string


_five = 5


def test_an_objective_registered_by_decorator_is_used_by_name():
    @objectives.register("doubled_fm", quadratic_in_v_c=True, weighting=True)
    def doubled_fm(model, x0, x1, r, t):
        """``2 |u(x_t, t, t) - v_c|^2``."""
        x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
        return 2 * (model(x_t, t, t) - (x1 - x0)).square().sum(1)

    try:
        obj = objectives.get("doubled_fm")
        assert "doubled_fm" in objectives.names() and obj.weighting and obj.is_quadratic()
        assert not obj.is_quadratic({"p": 1.0})  # weighting makes any loss non-polynomial
        assert obj.__doc__.startswith("``2 |u(x_t, t, t)")
        from mfverify import check

        report = check.run("doubled_fm", cases=["gauss2d_aniso"], weighting=False)
        assert report.checks["reduces_to_fm"].details["factor"] == pytest.approx(2.0, rel=1e-12)
        assert report.checks["stationary_at_exact_u"].passed
        assert not report.checks["trains_off_diagonal"].passed  # flow matching: the diagonal only
    finally:
        objectives.registry.unregister("doubled_fm")


def test_a_callable_is_accepted_wherever_a_name_is():
    from mfverify.theory import identities

    def my_mf(model, x0, x1, r, t):
        return objectives.get("mf")(model, x0, x1, r, t)

    obj = objectives.get(my_mf)
    assert not obj.is_quadratic() and obj.name.endswith("my_mf")  # undeclared: conservative
    m = get_case("gauss2d_aniso")
    x, r, t = torch.zeros(1, 2), torch.zeros(1), torch.full((1,), 0.5)
    h = lambda a, b, c: torch.sin(a)  # noqa: E731
    mean, se = identities.population_gradient_mc(my_mf, m, h, x, r, t, n_samples=2000,
                                                 generator=torch.Generator().manual_seed(0))
    assert mean.shape == (1,) and se.shape == (1,)


def test_networks_and_cases_registries():
    assert "mlp" in networks.names() and "ring8" in cases.names()
    with pytest.raises(TypeError, match=r"unexpected options \['widht'\]; its options: width, depth"):
        build_network("mlp", 2, {"widht": 3})
    with pytest.raises(ValueError, match="unknown network 'resnet'; known networks: mlp"):
        build_network("resnet", 2)
    net = build_network("tests.test_registry:_tiny_network", 3, {"scale": 2.0}, dtype=torch.float32)
    assert next(net.parameters()).dtype == torch.float32  # built in the asked dtype without a dtype argument
    assert get_case("tests.test_registry:_two_points").K == 2
    with pytest.raises(TypeError, match="must build a GaussianMixture"):
        get_case("tests.test_registry:_not_a_case")
    with pytest.raises(ValueError, match="unknown case 'ring9'; known cases: gauss1d"):
        get_case("ring9")
    assert "ring8" in list_cases()


def _tiny_network(d, scale=1.0):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(d + 2, d)

        def forward(self, x, r, t):
            return scale * self.lin(torch.cat([x, r[:, None], t[:, None]], 1))

    return Net()


def _two_points():
    """two points in 1-D"""
    from mfverify.cases import GaussianMixture

    return GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[[0.0]], [[0.0]]])


def _not_a_case():
    return 3


# ---------------------------------------------------------------- a plugin package

PLUGIN = '''
"""A tiny outside package: one objective (mf, written out) and one network."""
import torch

from mfverify.objectives import Objective


def _loss(model, x0, x1, r, t):
    x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
    v = x1 - x0
    u, dudt = torch.func.jvp(model, (x_t, r, t), (v, torch.zeros_like(r), torch.ones_like(t)))
    return (u - (v - (t - r)[:, None] * dudt).detach()).square().sum(1)


plugin_mf = Objective("plugin_mf", _loss, quadratic_in_v_c=True, weighting=True)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Installs (as pip would lay it out) a package with an entry point in mfverify.objectives."""
    root = tmp_path / "site"
    (root / "mfv_plugin").mkdir(parents=True)
    (root / "mfv_plugin" / "__init__.py").write_text(PLUGIN)
    info = root / "mfv_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mfv-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mfverify.objectives]\nplugin_mf = mfv_plugin:plugin_mf\n")
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root) + ":" + __import__("os").environ.get("PYTHONPATH", ""))
    importlib.invalidate_caches()
    objectives.registry.reload_entry_points()
    yield "plugin_mf"
    objectives.registry.unregister("plugin_mf")
    sys.modules.pop("mfv_plugin", None)


@pytest.mark.slow  # spawns processes
def test_an_installed_plugin_objective_runs_in_objectives_compare_with_two_jobs(plugin, tmp_path):
    assert plugin in objectives.names()
    out = tmp_path / "study"
    rc = study_main(["objectives_compare", "--preset", "quick", "--objectives", f"fm,{plugin}", "--jobs", "2",
                     "--out", str(out), "--no-progress"])
    assert rc == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    mine = [float(r["value"]) for r in rows if r["method"] == plugin and r["metric"] == "flow_map_mean"]
    assert len(mine) == 3  # NFE 1, 2, 4 of the quick preset
    assert all(v == v and v < 10 for v in mine)  # trained and evaluated: finite, data-sized errors


@pytest.mark.slow  # spawns processes
def test_a_plugin_objective_resolves_in_spawned_workers(plugin, tmp_path):
    # GPU studies spawn their workers: a fresh interpreter must find the name by itself
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    study = with_objectives(load_study(path), ["fm", plugin, "tests.public_losses:haidog_meanflow"])
    out = run_study(study, tmp_path / "spawned", jobs=2, progress=False, start_method="spawn")
    with open(out / "results.csv") as f:
        methods = {r["method"] for r in csv.DictReader(f)}
    assert {plugin, "tests.public_losses:haidog_meanflow"} <= methods
    assert (out / "runs" / "ring8" / "tests.public_losses_haidog_meanflow" / "seed0" / "run.json").exists()


@pytest.mark.slow  # spawns processes
def test_a_decorator_registered_objective_resolves_in_spawned_workers(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    (root / "mfv_decorated.py").write_text(textwrap.dedent('''
        from mfverify import objectives

        @objectives.register("decorated_fm", weighting=True, quadratic_in_v_c=True)
        def decorated_fm(model, x0, x1, r, t):
            x_t = (1 - t[:, None]) * x0 + t[:, None] * x1
            return (model(x_t, t, t) - (x1 - x0)).square().sum(1)
    '''))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))
    import mfv_decorated  # noqa: F401  registers "decorated_fm" in this process only

    try:
        path = tmp_path / "tiny.toml"
        path.write_text(TINY)
        study = with_objectives(load_study(path), ["fm", "decorated_fm"])
        out = run_study(study, tmp_path / "s", jobs=2, progress=False, start_method="spawn")
        fm = (out / "runs" / "ring8" / "fm" / "seed0" / "rows.csv").read_text().splitlines()[1:]
        mine = (out / "runs" / "ring8" / "decorated_fm" / "seed0" / "rows.csv").read_text().splitlines()[1:]
        # decorated_fm is fm written out: the same training, the same numbers
        assert [line.split(",", 3)[3] for line in mine if ",decorated_fm," in line] == [
            line.split(",", 3)[3] for line in fm if ",fm," in line
        ]
    finally:
        objectives.registry.unregister("decorated_fm")
        sys.modules.pop("mfv_decorated", None)
