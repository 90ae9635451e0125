"""A study folder on disk: where each file lives, the per-run CSV rows, the one writer of a
run's files, the lock, the refusal of a folder that holds something else, and the
environment records. Every file is written atomically (``mfverify.io``).

Layout::

    config.toml  env.json (env-2.json ...)  results.csv  runs.csv  summary.md  figures and tables
    truth/<case>.pt                      noise x1 and exact Phi(x1, 1 -> 0)
    truth/field_grid/<case>.pt           the field-error grid's points and exact u
    truth/guided/<case>__<target>.pt     conditional runs: labels and the exact guided map
    runs/<case>/<objective>/seed<k>/     checkpoint.pt, rows.csv, field_grid.csv, samples.pt (seed 0),
                                         run.json (written last: the run is finished)
    runs/<case>/baselines/rows.csv, samples.pt
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path

from mfverify.io import write_bytes, write_text

# results.csv and a run's rows.csv; runs.csv; a run's field_grid.csv
COLUMNS = ["study", "case", "method", "seed", "nfe", "metric", "value"]
RUN_COLUMNS = ["study", "case", "objective", "seed", "steps", "wall_seconds", "final_loss", "diverged_step", "device",
               "ensemble"]
FIELD_COLUMNS = ["r", "t", "field_error", "u_sq", "relative"]


def slug(name: str) -> str:
    """A name as one folder name ("pkg.mod:attr" -> "pkg.mod_attr")."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def truth_path(out: Path, case: str) -> Path:
    return out / "truth" / f"{case}.pt"


def guided_path(out: Path, case: str, key: str) -> Path:
    return out / "truth" / "guided" / f"{slug(case)}__{slug(key)}.pt"


def field_grid_path(out: Path, case: str) -> Path:
    return out / "truth" / "field_grid" / f"{slug(case)}.pt"


def run_dir(out: Path, case: str, objective: str, seed: int) -> Path:
    return out / "runs" / slug(case) / slug(objective) / f"seed{seed}"


def csv_text(table: list[dict], columns=None) -> str:
    """A table as CSV text, floats written by ``repr`` (they read back bit for bit)."""
    buf = io.StringIO()
    columns = columns or (list(table[0]) if table else [])
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in table:
        writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def rows_text(rows) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "value": repr(float(row["value"]))})
    return buf.getvalue()


def write_rows(path: Path, rows) -> None:
    write_text(path, rows_text(rows))


def read_csv(path) -> list[dict]:
    """A CSV file's rows as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def store(out: Path, output: dict) -> dict:
    """Write one run's files (the driver, the only writer), ``run.json`` last: it marks the
    run finished."""
    folder = run_dir(out, output["case"], output["objective"], output["seed"])
    for name, data in output["files"].items():
        write_bytes(folder / name, data)
    write_text(folder / "run.json", json.dumps(output["record"], indent=1))
    return output["record"]


# ------------------------------------------------------- the folder and its lock


def check_out(out: Path, config_text: str, resume: bool) -> None:
    """``out`` is absent, empty, or (with ``resume``) a study of this very configuration."""
    if not out.exists():
        if resume:
            raise ValueError(f"--resume {out}: no such folder")
        return
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    entries = [p.name for p in out.iterdir() if p.name != ".lock"]
    if not entries:
        return
    config = out / "config.toml"
    if not config.exists():
        raise ValueError(f"{out} is not empty and holds no study ({', '.join(sorted(entries)[:5])}"
                         f"{', ...' if len(entries) > 5 else ''}): refusing to write into it; choose another --out")
    if not resume:
        raise ValueError(f"{out} already holds a study; use --resume {out} to continue it")
    old = config.read_text()
    if _settings(old) != _settings(config_text):  # the header comment names the source file: not a setting
        raise ValueError(f"{out}/config.toml differs from the study being resumed ({_first_difference(old, config_text)}); "
                         "resume with the same settings")


def check_ensemble_setting(out: Path, ensemble: bool) -> None:
    """A study resumes with the ``--ensemble`` setting it was started with (``env.json``)."""
    first = out / "env.json"
    if not first.is_file():
        return
    try:
        was = bool(json.loads(first.read_text()).get("ensemble", False))
    except (OSError, ValueError):
        return
    if was != bool(ensemble):
        flag = "with" if was else "without"
        raise ValueError(f"{out} was run {flag} --ensemble; resume it {flag} --ensemble (the setting of a study "
                         "does not change midway)")


def _first_difference(old: str, new: str) -> str:
    """The first differing setting, as ``[section] key: old -> new``."""
    section = ""
    olds, news = _settings(old), _settings(new)
    for i in range(max(len(olds), len(news))):
        a = olds[i] if i < len(olds) else "(nothing)"
        b = news[i] if i < len(news) else "(nothing)"
        if a.startswith("["):
            section = a
        if a != b:
            return f"{section} {a} (in the folder) vs {b} (now)".strip()
    return "no line differs"


def _settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


class StudyLock:
    """An advisory lock on an output folder: ``.lock`` holding the owner's pid, created
    exclusively; a lock whose process is gone is stale and taken over."""

    def __init__(self, out: Path):
        self.path = Path(out) / ".lock"
        self.held = False

    def __enter__(self):
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = _lock_owner(self.path)
                if pid is not None and _alive(pid):
                    raise ValueError(f"{self.path.parent} is in use by another study (pid {pid}, {self.path}); "
                                     "wait for it to finish, or remove the lock if that process is gone") from None
                self.path.unlink(missing_ok=True)  # stale: its owner died
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            self.held = True
            return self
        raise ValueError(f"could not lock {self.path.parent}")

    def __exit__(self, *exc):
        if self.held and _lock_owner(self.path) == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False


def _lock_owner(path: Path):
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out: Path) -> None:
    """Remove what an interrupted atomic write leaves: ``.NAME.*.tmp`` (``mfverify.io``),
    in a folder this process has locked."""
    for tmp in out.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def record_environment(out: Path, env: dict) -> None:
    """``env.json`` is the environment of the first run; a resume in another environment adds
    ``env-2.json``, ``env-3.json``, ... and never rewrites an earlier one."""
    first = out / "env.json"
    if not first.exists():
        write_text(first, json.dumps(env, indent=1))
        return
    files = [first] + sorted(out.glob("env-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    same = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "recorded"} == {  # noqa: E731
        k: v for k, v in env.items() if k != "recorded"}
    if any(same(p) for p in files):
        return
    write_text(out / f"env-{len(files) + 1}.json", json.dumps(env, indent=1))
