"""``mfverify check``'s exits mean one thing each (issue 37): every probe that once crashed into a
verdict is now a usage error in one line on stderr, no traceback, nothing written; undecided is 3 and
Ctrl-C 130; the README's exit-status table is the code's."""

import json
import re
from pathlib import Path

import pytest

from mfverify.check import EXIT, main

ROOT = Path(__file__).resolve().parents[1]
LOSS = "tests.as_written_losses:meanflow"


def _run(argv, capsys):
    rc = main(argv + ["--no-progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_usage_error(rc, err):
    assert rc == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err


@pytest.fixture
def module_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("source, says", [
    ("def loss(model, x0:\n    return 0\n", "SyntaxError"),
    ("raise RuntimeError('no GPU here')\n", "RuntimeError: no GPU here"),
    ("import a_package_that_is_not_installed\n", "ModuleNotFoundError"),
])
def test_a_module_that_does_not_import_is_a_usage_error(source, says, module_dir, capsys):
    name = f"broken_{abs(hash(source)) % 10**8}"
    (module_dir / f"{name}.py").write_text(source)
    rc, _, err = _run(["--as-written", f"{name}:loss", "--cases", "bimodal1d"], capsys)
    _one_line_usage_error(rc, err)
    assert "cannot import module" in err and says in err


def test_paths_that_cannot_be_written_are_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("mine")
    for flags in (["--json", str(blocker / "report.json")], ["--sampler-out", str(blocker / "sampler")],
                  ["--json", "/proc/report.json"], ["--sampler-out", "/proc/mfverify/sampler"]):
        rc, out, err = _run(["--as-written", LOSS, "--cases", "bimodal1d", *flags], capsys)
        _one_line_usage_error(rc, err)
        assert out == "" and ("is a file" in err or "not writable" in err), err  # no work was done
    assert blocker.read_text() == "mine"


def test_a_batch_that_does_not_fit_in_memory_is_refused_with_the_memory_it_needs(capsys):
    rc, out, err = _run(["--as-written", LOSS, "--cases", "bimodal1d", "--batch-size", "200000000"], capsys)
    _one_line_usage_error(rc, err)
    assert re.search(r"needs about [\d.]+ GiB", err) and "lower --batch-size" in err and out == ""


def test_a_case_named_twice_is_refused(capsys):
    for argv in (["--as-written", LOSS, "--cases", "ring8", "ring8"], ["mf", "--cases", "ring8", "ring8"]):
        rc, _, err = _run(argv, capsys)
        _one_line_usage_error(rc, err)
        assert "ring8 more than once" in err


@pytest.mark.parametrize("name, says", [
    ("never_calls_the_model", "never calls the model"),
    ("calls_under_no_grad", "under torch.no_grad()"),
])
def test_a_loss_that_cannot_train_its_model_is_a_usage_error_saying_why(name, says, capsys):
    rc, _, err = _run(["--as-written", f"tests.as_written_losses:{name}", "--cases", "bimodal1d"], capsys)
    _one_line_usage_error(rc, err)
    assert says in err


def test_ctrl_c_is_130_in_one_line_and_writes_nothing(tmp_path, capsys):
    report = tmp_path / "report.json"
    rc, _, err = _run(["--as-written", "tests.as_written_losses:interrupted", "--cases", "bimodal1d",
                       "--json", str(report)], capsys)
    assert rc == EXIT["interrupted"] == 130 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not report.exists()


def test_undecided_is_exit_three_and_the_report_says_it(tmp_path, capsys):
    report = tmp_path / "report.json"
    rc, out, _ = _run(["--as-written", LOSS, "--cases", "ring8", "--max-batches", "8", "--json", str(report)],
                      capsys)
    assert rc == EXIT["undecided"] == 3 and "UNDECIDED" in out
    blob = json.loads(report.read_text())
    assert blob["verdict"] == "undecided" and blob["exit_status"] == 3
    assert blob["checks"]["stationary_as_written"]["insufficient"] == ["ring8"]


def test_a_loss_drawing_from_numpy_is_reported_as_not_repeatable(capsys):
    from mfverify.check.as_written import run_as_written
    from tests import as_written_losses as L

    report = run_as_written(L.draws_from_numpy, cases=["bimodal1d"], max_batches=8)
    assert report.to_dict()["reproducible"] == {"bit_for_bit": False, "unseeded_generators": ["numpy.random"]}
    assert any("cannot be repeated bit for bit" in n for n in report.notes)
    assert run_as_written(L.meanflow, cases=["bimodal1d"], max_batches=8).unseeded == []


def test_the_readme_exit_status_table_is_the_codes():
    """Each row ``| N | meaning |`` of the README's table under "Exit status" is EXIT's."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("Exit status"):]
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+) \|", section, flags=re.M)[:5])
    assert {int(k) for k in rows} == set(EXIT.values())
    words = {"passed": "passed", "failed": "defect", "usage": "usage", "undecided": "undecided",
             "interrupted": "interrupted"}
    for name, code in EXIT.items():
        assert words[name] in rows[str(code)].lower(), (name, rows[str(code)])


def test_the_help_reads_cleanly(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "{x,r,t" not in text  # no raw markup, no unreadable choice set
    for name in ("x,r,t", "x,t,h", "reversed,t,h"):
        assert re.search(rf"^\s+{re.escape(name)}\s+\S", text, flags=re.M), name  # one per line, with its meaning
    assert text.count("(default: 512)") == 1 and "3    undecided" in text
    defaults = re.findall(r"\(default: [^)]*\)", text)
    assert all(d.count("default") == 1 for d in defaults)
