"""Study configuration: TOML files (``mfverify/studies/``, ``./studies/``) <-> frozen dataclasses, one to one.

A study file has three sections, each mapped onto a dataclass::

    [study]   -> StudySpec   (cases, objectives, baselines, seeds)
    [train]   -> TrainConfig (mfverify.train; case/objective/seed are set per run)
    [eval]    -> EvalConfig  (NFE list, noise samples, metric sizes)

optional ``[objective_options.OBJECTIVE]`` tables (the options of one objective,
e.g. ``[objective_options.scm] tangent_norm_c = 0.1``), ``[network_options.NETWORK]``
tables (the options of the network named by ``[train] network``, e.g.
``[network_options.mlp] width = 128``), ``[overrides.OBJECTIVE]`` tables (``[train]``
keys for one objective only, e.g. its loss weighting; ``objective_options`` and
``network_options`` there are tables merged over the study's), and optional
``[presets.NAME.SECTION]`` tables that override keys of the same sections. An
unknown section or key, or a value of the wrong type, is an error naming the key
and the file; so is an option the objective or the network does not take.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

from mfverify.registry import Registry
from mfverify.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BASELINES = ("exact_u", "exact_v_euler", "exact_v_heun", "fm_euler", "fm_heun")
# baselines made from a trained model used as a velocity field: (its objective, NFE per step)
MODEL_BASELINES = {"fm_euler": ("fm", 1), "fm_heun": ("fm", 2)}
PER_RUN_FIELDS = ("case", "objective", "seed")  # set by the study for each run
OPTION_FIELDS = ("network_options", "objective_options")  # from their own tables


def _no_duplicates(key, values):
    seen = set()
    for v in values:
        if v in seen:
            raise ValueError(f"{key} lists {v!r} twice")
        seen.add(v)


@dataclass(frozen=True)
class StudySpec:
    """``variants``: study-local names for an objective with other options,
    ``{name = "objective"}`` (``[study] variants = { alpha_flow_curriculum = "alpha_flow" }``);
    a variant is listed in ``objectives`` and takes its options from
    ``[objective_options.NAME]`` / ``[overrides.NAME]`` like any objective.

    ``seeds_of`` and ``cases_of``: per objective (a name or a variant), another number of
    seeds (``{ mf_sg = 5 }``) or a subset of ``cases`` (``{ p0 = ["ring8"] }``).
    ``report``: ``"package.module:function"`` called as ``function(study, out)`` after the
    study's tables are written (a study's own report, e.g. the claims report), with
    ``report_options`` (numbers: the sizes of its own computations) in ``study.study``."""

    name: str = "objectives_compare"
    cases: tuple = ("ring8",)
    objectives: tuple = ("fm", "mf")
    baselines: tuple = BASELINES
    seeds: int = 3
    variants: tuple = ()  # ((name, objective), ...)
    seeds_of: tuple = ()  # ((name, seeds), ...)
    cases_of: tuple = ()  # ((name, (case, ...)), ...)
    report: str = ""
    report_options: tuple = ()  # ((key, number), ...): sizes of the report's own computations

    def objective_of(self, name: str) -> str:
        """The registered objective a study objective (a name or a variant) trains."""
        return dict(self.variants).get(name, name)

    def seeds_for(self, name: str) -> int:
        return dict(self.seeds_of).get(name, self.seeds)

    def cases_for(self, name: str) -> tuple:
        return tuple(dict(self.cases_of).get(name, self.cases))

    def runs(self) -> list[tuple[str, str, int]]:
        """Every run ``(case, objective, seed)`` of the study, case by case, in order."""
        return [(case, obj, seed) for case in self.cases for obj in self.objectives if case in self.cases_for(obj)
                for seed in range(self.seeds_for(obj))]

    def __post_init__(self):
        from mfverify import objectives
        from mfverify.cases import get_case

        for key in ("variants", "seeds_of", "cases_of", "report_options"):
            if isinstance(getattr(self, key), dict):
                object.__setattr__(self, key, tuple(sorted(getattr(self, key).items())))
        object.__setattr__(self, "cases_of", tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in self.cases_of))
        registered = set(objectives.names())
        for name, target in self.variants:
            if not isinstance(target, str):
                raise ValueError(f"variant {name!r} must name an objective (a string), got {target!r}")
            if name in registered:
                raise ValueError(f"variant {name!r} shadows the registered objective of that name; choose another")
            if target in dict(self.variants):
                raise ValueError(f"variant {name!r} names another variant ({target!r}); name an objective")
            objectives.get(target)
        for key in ("cases", "objectives"):
            if not getattr(self, key):
                raise ValueError(f"{key} must name at least one {key[:-1]}, got an empty list")
        for key in ("cases", "objectives", "baselines"):
            _no_duplicates(key, getattr(self, key))
        for case in self.cases:
            get_case(case)
        for name in self.objectives:
            objectives.get(self.objective_of(name))
        for b in self.baselines:
            if b not in BASELINES:
                raise ValueError(f"unknown baseline {b!r}; known baselines: {', '.join(BASELINES)}")
        for b in self.baselines:
            source = MODEL_BASELINES.get(b, (None,))[0]
            if source is not None and source not in self.objectives:
                raise ValueError(f"baseline {b} needs {source!r} among the objectives")
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {self.seeds!r}")
        for name, seeds in self.seeds_of:
            if name not in self.objectives:
                raise ValueError(f"seeds_of names {name!r}, which is not among the objectives")
            if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
                raise ValueError(f"seeds_of.{name} must be a positive int, got {seeds!r}")
        for name, cases in self.cases_of:
            if name not in self.objectives:
                raise ValueError(f"cases_of names {name!r}, which is not among the objectives")
            if not isinstance(cases, tuple) or not cases or any(c not in self.cases for c in cases):
                raise ValueError(f"cases_of.{name} must be a non-empty list of the study's cases "
                                 f"{list(self.cases)}, got {cases!r}")
            _no_duplicates(f"cases_of.{name}", cases)
        if self.report:
            if not isinstance(self.report, str) or ":" not in self.report:
                raise ValueError(f"report must be 'package.module:function', got {self.report!r}")
        for key, value in self.report_options:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"report_options.{key} must be a number, got {value!r}")
        if self.report_options and not self.report:
            raise ValueError("report_options needs a report")


@dataclass(frozen=True)
class EvalConfig:
    nfe: tuple = (1, 2, 4, 8, 16)
    n_noise: int = 4096  # the same noise samples for every method and seed
    noise_seed: int = 12345
    w2_samples: int = 1024  # exact OT on the first w2_samples samples
    field_samples: int = 1024  # points (x_t, r, t) for the field error
    # figures: the samples grid shows the first sample_points noise samples (all if fewer)
    # at the NFEs sample_nfe (empty: those of 1, 2, 16 in nfe, else the smallest and largest)
    sample_nfe: tuple = ()
    sample_points: int = 1000
    # the field-error heatmap: (r, t) on the nodes i/field_grid, r <= t, t > 0, with
    # field_grid_samples points x_t ~ p_t at each
    field_grid: int = 8
    field_grid_samples: int = 256

    def __post_init__(self):
        for key in ("nfe", "sample_nfe"):
            values = getattr(self, key)
            if (key == "nfe" and not values) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in values):
                raise ValueError(f"{key} must be a list of positive ints, got {values!r}")
            _no_duplicates(key, values)
        missing = [n for n in self.sample_nfe if n not in self.nfe]
        if missing:
            raise ValueError(f"sample_nfe must be a subset of nfe {list(self.nfe)}, got {list(self.sample_nfe)} "
                             f"({', '.join(map(str, missing))} not in nfe)")
        for name in ("n_noise", "w2_samples", "field_samples", "sample_points", "field_grid_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2, got {value!r}")
        if isinstance(self.field_grid, bool) or not isinstance(self.field_grid, int) or not 1 <= self.field_grid <= 64:
            raise ValueError(f"field_grid must be an int in [1, 64] (the number of t nodes), got {self.field_grid!r}")
        if self.w2_samples > self.n_noise:
            raise ValueError(f"w2_samples ({self.w2_samples}) must be <= n_noise ({self.n_noise}): W2 is computed on "
                             "the first w2_samples of the n_noise samples")

    def figure_nfe(self) -> tuple:
        """The NFEs of the samples figure: ``sample_nfe``, or by default those of
        (1, 2, 16) in ``nfe`` (the smallest and largest if none is)."""
        if self.sample_nfe:
            return tuple(self.sample_nfe)
        chosen = tuple(n for n in (1, 2, 16) if n in self.nfe)
        return chosen or tuple(sorted({min(self.nfe), max(self.nfe)}))

    def field_nodes(self) -> list[tuple[float, float]]:
        """``(r, t)`` of the field-error grid: t = j/n for j = 1..n, r = i/n for i = 0..j."""
        n = self.field_grid
        return [(i / n, j / n) for j in range(1, n + 1) for i in range(j + 1)]


@dataclass(frozen=True)
class Study:
    study: StudySpec
    train: TrainConfig
    eval: EvalConfig
    overrides: tuple = ()  # ((objective, ((key, value), ...)), ...): [overrides.OBJECTIVE]
    source: str = ""
    objective_options: tuple = ()  # ((objective, ((key, value), ...)), ...): [objective_options.OBJECTIVE]
    network_options: tuple = ()  # ((network, ((key, value), ...)), ...): [network_options.NETWORK]

    def run_config(self, case: str, objective: str, seed: int) -> TrainConfig:
        from mfverify import objectives

        extra = dict(dict(self.overrides).get(objective, ()))
        if "p" not in extra and self.train.p != 0 and not objectives.get(self.study.objective_of(objective)).weighting:
            # [train] p is the weighting of the objectives that take one; a plain loss (one a user adds
            # with --objectives) is trained without. p asked of it in its own [overrides] is an error.
            extra["p"] = 0.0
        network = extra.get("network", self.train.network)
        net = {**dict(dict(self.network_options).get(network, ())), **dict(extra.pop("network_options", ()))}
        obj = {**dict(dict(self.objective_options).get(objective, ())), **dict(extra.pop("objective_options", ()))}
        return replace(self.train, case=case, objective=self.study.objective_of(objective), seed=seed, **extra,
                       network_options=tuple(sorted(net.items())), objective_options=tuple(sorted(obj.items())))


SECTIONS = {"study": StudySpec, "train": TrainConfig, "eval": EvalConfig}


BUILTIN_STUDIES = Path(__file__).resolve().parents[1] / "studies"  # shipped inside the package


def studies_dirs() -> list[Path]:
    """Where studies are found, later ones shadowing earlier ones: the package's own
    (``mfverify/studies``), the current folder's ``studies/``, and ``$MFVERIFY_STUDIES``."""
    dirs = [BUILTIN_STUDIES, Path.cwd() / "studies"]
    if "MFVERIFY_STUDIES" in os.environ:
        dirs.append(Path(os.environ["MFVERIFY_STUDIES"]))
    return [d for d in dirs if d.is_dir()]


def _as_study_file(obj, name: str) -> Path:
    """A registered study is the path of its TOML file."""
    if not isinstance(obj, (str, os.PathLike)):
        raise TypeError(f"a study is registered as the path of its TOML file, got {type(obj).__name__}")
    path = Path(obj)
    if path.suffix != ".toml" or not path.is_file():
        raise ValueError(f"study {name!r}: {path} is not a TOML file")
    return path


studies = Registry("study", "mfverify.studies", wrap=_as_study_file)
"""Studies by name: the files of ``studies_dirs()``, and those registered with
``studies.register("name", "path/to/study.toml")``, a ``"package.module:attr"`` string
naming such a path, or an entry point in the group ``mfverify.studies``."""


def study_files() -> dict[str, Path]:
    """Every known study: the files of ``studies_dirs()``, then registered ones."""
    out = {path.stem: path for d in studies_dirs() for path in sorted(d.glob("*.toml"))}
    for name in studies.names():
        out.setdefault(name, studies.get(name))
    return out


def list_studies() -> dict[str, str]:
    """Study names with the first comment line of their file."""
    out = {}
    for name, path in study_files().items():
        first = path.read_text().splitlines()[0] if path.stat().st_size else ""
        out[name] = first.lstrip("# ").strip()
    return out


def _coerce(file, key, value, default):
    """Check ``value`` against the type of the field's default; lists become tuples."""
    where = f"{file}: key '{key}'"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif key.rsplit(".", 1)[-1] in OPTION_FIELDS + ("variants", "seeds_of", "cases_of", "report_options"):
        ok = isinstance(value, dict)
        value = tuple(sorted(value.items())) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, list)
        value = tuple(value) if ok else value
    else:
        ok = True
    if not ok:
        raise ValueError(f"{where} must be of type {type(default).__name__} like its default, got {value!r}")
    return value


def _section(file, name, table, base, label=None):
    """Apply ``table`` to the dataclass ``base`` of section ``name``; ``label`` prefixes keys in errors."""
    label = label or name
    cls = type(base)
    known = {f.name: f for f in fields(cls)}
    if not isinstance(table, dict):
        raise ValueError(f"{file}: [{name}] must be a table")
    updates = {}
    per_run = PER_RUN_FIELDS + (OPTION_FIELDS if label == "train" or label.endswith(".train") else ())
    for key, value in table.items():
        if key not in known or (name == "train" and key in per_run):
            allowed = [k for k in known if not (name == "train" and k in per_run)]
            raise ValueError(f"{file}: unknown key '{label}.{key}'; known keys of [{name}]: {', '.join(allowed)}")
        updates[key] = _coerce(file, f"{label}.{key}", value, getattr(base, key))
    try:
        return replace(base, **updates)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{file}: [{label}]: {err}") from err


def _sets(table, key) -> bool:
    return isinstance(table, dict) and key in table


def _capped(table, listed_w2: bool):
    """``[eval]`` with ``w2_samples`` lowered to ``n_noise`` where the file never sets it (the default,
    1024, is for the default ``n_noise``: W2 is computed on the first ``w2_samples`` samples)."""
    n = table.get("n_noise") if isinstance(table, dict) else None
    if listed_w2 or isinstance(n, bool) or not isinstance(n, int):
        return table
    return {**table, "w2_samples": min(EvalConfig.w2_samples, n)}


# [train] keys a study file should set, and objectives_compare's values (docs/studies.md: defaults)
STATED_DEFAULTS = ("steps", "batch", "lr", "lr_schedule", "ema_decay", "p", "c", "time_sampler", "frac_r_eq_t")


def defaults_in_effect(name_or_path, preset: str | None = None) -> dict:
    """``{key: value}`` of the ``[train]`` keys in ``STATED_DEFAULTS`` that neither the file's
    ``[train]`` nor the preset's sets: the run takes ``TrainConfig``'s defaults for them."""
    data = _read(_study_file(name_or_path))
    given = set(data.get("train", {})) if isinstance(data.get("train"), dict) else set()
    table = data.get("presets", {}).get(preset, {}) if preset else {}
    if isinstance(table, dict) and isinstance(table.get("train"), dict):
        given |= set(table["train"])
    defaults = TrainConfig()
    return {k: getattr(defaults, k) for k in STATED_DEFAULTS if k not in given}


def ema_warning(train) -> str | None:
    """A sentence when the EMA's horizon ``1 / (1 - ema_decay)`` is longer than the training: the
    EMA model, which is evaluated, is then mostly its initial weights."""
    if train.ema_decay <= 0:
        return None
    horizon = 1 / (1 - train.ema_decay)
    if horizon <= train.steps:
        return None
    kept = train.ema_decay ** train.steps
    return (f"ema_decay = {train.ema_decay:g} averages over about {horizon:.0f} steps, more than the {train.steps} "
            f"steps of training: the evaluated EMA model keeps {kept:.0%} of its initial weights; set [train] "
            f"ema_decay below {1 - 1 / train.steps:.4g} (objectives_compare: 0.995 over 4000 steps)")


def possible_baselines(objectives) -> tuple:
    """The baselines a study gets when it lists none: the exact ones, and those made from a trained
    model (``fm_euler``, ``fm_heun``) only where that model's objective is listed."""
    listed = set(objectives) if isinstance(objectives, (list, tuple)) else set()
    return tuple(b for b in BASELINES if b not in MODEL_BASELINES or MODEL_BASELINES[b][0] in listed)


def _study_file(name_or_path) -> Path:
    path = Path(name_or_path)
    if path.suffix != ".toml":
        files = study_files()
        if name_or_path in files:
            path = files[name_or_path]
        elif ":" in str(name_or_path):
            path = studies.get(str(name_or_path))
        else:
            where = ", ".join(str(d) for d in studies_dirs())
            raise ValueError(f"no study {name_or_path!r} (looked in {where}); known studies: "
                             f"{', '.join(files) or 'none'}")
    if not path.is_file():
        known = ", ".join(list_studies()) or "none"
        raise ValueError(f"no study {name_or_path!r} (looked for {path}); known studies: {known}")
    return path


def _read(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    presets = data.get("presets", {})
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise ValueError(f"{path}: [presets] must hold one table per preset, e.g. [presets.quick.train]")
    return data


def study_presets(name_or_path) -> list[str]:
    """The names of a study's presets (``[presets.NAME]``)."""
    return list(_read(_study_file(name_or_path)).get("presets", {}))


def load_study(name_or_path, preset: str | None = None) -> Study:
    """Read ``studies/NAME.toml`` (or a path) and apply ``[presets.PRESET]`` (``None``: as written).

    Every key of the file is validated, those of every preset included (not only the
    one applied), before anything is run or written."""
    path = _study_file(name_or_path)
    data = _read(path)
    presets = data.get("presets", {})
    if preset is not None and preset not in presets:
        raise ValueError(f"{path}: no preset {preset!r}; presets: {', '.join(presets) or 'none'}")
    for other in presets:
        if other != preset:
            _resolve(path, data, other)
    return _resolve(path, data, preset)


def _resolve(path: Path, data: dict, preset: str | None) -> Study:
    unknown = set(data) - set(SECTIONS) - set(OPTION_FIELDS) - {"presets", "overrides"}
    if unknown:
        raise ValueError(
            f"{path}: unknown section(s) {sorted(unknown)}; known: study, train, eval, objective_options, "
            "network_options, overrides, presets"
        )
    base = {"study": StudySpec(), "train": TrainConfig(), "eval": EvalConfig()}
    study_table = data.get("study", {})
    listed_baselines = isinstance(study_table, dict) and "baselines" in study_table
    if isinstance(study_table, dict) and "name" not in study_table:  # a user's file: named after itself
        base["study"] = replace(base["study"], name=path.stem)
    if not listed_baselines:  # the baselines this study's objectives make possible (fm_euler needs fm)
        base["study"] = replace(base["study"], baselines=possible_baselines(
            study_table.get("objectives", base["study"].objectives) if isinstance(study_table, dict) else ()))
    resolved = {"study": _section(path, "study", study_table, base["study"])}
    # [train] is checked on the study's first case (conditional = true needs a labelled one)
    base["train"] = replace(base["train"], case=resolved["study"].cases[0])
    listed_w2 = _sets(data.get("eval"), "w2_samples") or any(_sets(t.get("eval"), "w2_samples")
                                                               for t in data.get("presets", {}).values()
                                                               if isinstance(t, dict))
    resolved.update({n: _section(path, n, _capped(data.get(n, {}), listed_w2) if n == "eval" else data.get(n, {}),
                                 base[n]) for n in ("train", "eval")})
    options = {n: _option_tables(path, n, data.get(n, {}), {}) for n in OPTION_FIELDS}
    presets = data.get("presets", {})
    if preset is not None:
        if preset not in presets:
            raise ValueError(f"{path}: no preset {preset!r}; presets: {', '.join(presets) or 'none'}")
        table = presets[preset]
        bad = set(table) - set(SECTIONS) - set(OPTION_FIELDS)
        if bad:
            raise ValueError(f"{path}: unknown section(s) {sorted(bad)} in [presets.{preset}]")
        for n in SECTIONS:
            if n in table:
                section = table[n]
                if n == "study" and isinstance(section, dict) and not listed_baselines \
                        and "baselines" not in section and "objectives" in section:
                    section = {**section, "baselines": list(possible_baselines(section["objectives"]))}
                if n == "eval":
                    section = _capped(section, listed_w2)
                resolved[n] = _section(path, n, section, resolved[n], label=f"presets.{preset}.{n}")
                if n == "study":
                    resolved["train"] = replace(resolved["train"], case=resolved["study"].cases[0])
        for n in OPTION_FIELDS:
            if n in table:
                options[n] = _option_tables(path, f"presets.{preset}.{n}", table[n], options[n])
    overrides = []
    for objective, table in data.get("overrides", {}).items():
        if objective not in resolved["study"].objectives:
            raise ValueError(f"{path}: [overrides.{objective}] names no objective of this study")
        checked = _section(path, "train", table, resolved["train"], label=f"overrides.{objective}")
        overrides.append((objective, tuple((k, getattr(checked, k)) for k in table)))
    for objective in options["objective_options"]:
        if objective not in resolved["study"].objectives:
            raise ValueError(f"{path}: [objective_options.{objective}] names no objective of this study")
    study = Study(
        resolved["study"], resolved["train"], resolved["eval"], tuple(overrides), source=str(path),
        **{n: tuple((k, tuple(sorted(v.items()))) for k, v in options[n].items()) for n in OPTION_FIELDS},
    )
    check_runs(study, path)
    return study


def _option_tables(file, label, tables, base: dict) -> dict:
    """``{name: {key: value}}`` from ``[label.NAME]`` tables, merged over ``base``."""
    if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
        raise ValueError(f"{file}: [{label}] must hold one table per name, e.g. [{label}.NAME]")
    out = {k: dict(v) for k, v in base.items()}
    for name, table in tables.items():
        out.setdefault(name, {}).update(table)
    return out


def with_objectives(study: Study, names) -> Study:
    """The study with another list of objectives; overrides and options of dropped ones go, and so do
    the baselines made from a dropped objective's model (``fm_euler`` without ``fm``)."""
    keep = lambda pairs: tuple((k, v) for k, v in pairs if k in names)  # noqa: E731
    names = tuple(names)
    baselines = tuple(b for b in study.study.baselines if b not in MODEL_BASELINES or MODEL_BASELINES[b][0] in names)
    spec = replace(study.study, objectives=names, baselines=baselines, seeds_of=keep(study.study.seeds_of),
                   cases_of=keep(study.study.cases_of))
    out = replace(study, study=spec, overrides=keep(study.overrides), objective_options=keep(study.objective_options))
    check_runs(out, study.source or "study")
    return out


def check_runs(study: Study, file="study") -> None:
    """Every run's configuration is valid (objective and network options included): a
    mistake is found when the study is loaded, before any file is written."""
    from mfverify.cases import get_case
    from mfverify.train import build_model, resolve_device

    built = set()
    for objective in study.study.objectives:
        try:
            cfg = study.run_config(study.study.cases[0], objective, 0)
            key = (cfg.network, cfg.network_options)
            if key not in built:  # option values too (time_inputs = "foo"): a tiny build
                build_model(cfg, get_case(cfg.case).d)
                built.add(key)
            resolve_device(cfg.device)  # device = "cuda" without CUDA
        except (ValueError, TypeError) as err:
            raise ValueError(f"{file}: the runs of objective {objective!r}: {err}") from err


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")


def _toml_table(items) -> str:
    return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in items) + " }"


def to_toml(study: Study, header: str = "") -> str:
    """The resolved configuration as TOML (``load_study`` reads it back)."""
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    for name in SECTIONS:
        obj = getattr(study, name)
        lines.append(f"\n[{name}]")
        for f in fields(obj):
            if name == "train" and f.name in PER_RUN_FIELDS + OPTION_FIELDS:
                continue
            if name == "study" and f.name in ("variants", "seeds_of", "cases_of", "report", "report_options"):
                if getattr(obj, f.name):  # written only when used: a study without them reads as before
                    value = getattr(obj, f.name)
                    lines.append(f"{f.name} = " + (_toml_value(value) if f.name == "report" else _toml_table(value)))
                continue
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
    for section in OPTION_FIELDS:
        for owner, items in getattr(study, section):
            lines.append(f"\n[{section}.{owner}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in items]
    for objective, items in study.overrides:
        lines.append(f"\n[overrides.{objective}]")
        lines += [f"{k} = " + (_toml_table(v) if k in OPTION_FIELDS else _toml_value(v)) for k, v in items]
    return "\n".join(lines).lstrip("\n") + "\n"


def as_dict(study: Study) -> dict:
    out = {n: dataclasses.asdict(getattr(study, n)) for n in SECTIONS}
    for n in OPTION_FIELDS:
        out[n] = {owner: dict(items) for owner, items in getattr(study, n)}
    return out
