"""The house (docs/ARCHITECTURE.md): no import circle, no source file over 600 lines, the layers of
pyproject.toml kept, and the public paths that moved still importable as the same modules."""

import importlib
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 600  # docs/ARCHITECTURE.md: a file of one job fits on a few screens


def _cycles(edges: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1 or v in edges.get(v, ()):
                    out.append(sorted(comp))
    return out


def test_the_cycle_finder_finds_a_circle_and_passes_a_chain():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_among_mfverifys_modules():
    """Every import, a function's own included (grimp reads them all), points one way."""
    graph = grimp.build_graph("mfverify")
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    assert _cycles(edges) == []


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / "mfverify").rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.slow  # spawns processes
def test_the_layers_in_pyproject_are_kept():
    res = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                          "sys.exit(lint_imports_command())"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("public, home", [("mfverify.testing", "mfverify.check.testing"),
                                          ("mfverify.conventions", "mfverify.check.conventions"),
                                          ("mfverify.stability", "mfverify.theory.stability"),
                                          ("mfverify.jax", "mfverify.check.jax_model")])
def test_a_public_path_that_moved_is_the_same_module(public, home):
    assert importlib.import_module(public) is importlib.import_module(home)


def test_every_subpackage_says_what_lives_there_and_what_it_may_import():
    for init in sorted((ROOT / "mfverify").rglob("__init__.py")):
        doc = importlib.import_module(".".join(init.relative_to(ROOT).parent.parts)).__doc__ or ""
        assert len(doc.split()) >= 20, init
        if init.parent.name not in ("mfverify", "claims"):
            assert "Imports:" in doc, init
