"""Studies: a study file (``studies/*.toml``) trained, measured against the exact maps, and
reported. ``config`` maps a study file onto frozen dataclasses; a run of a study reads
``exact`` (the exact references per case) -> ``plan`` (the jobs) -> ``executors`` and
``execute`` (where and how a job runs) -> ``store`` (the one writer of the folder) ->
``report`` (results.csv, runs.csv, ``tables``, ``figures``, summary.md), driven by
``runner``. ``claims`` and ``headlines`` are reports built on a finished study. A new
kind of study is a TOML file (and, for its own report, a module here named in its
``[study] report``).

Imports: everything below it; nothing imports a study.
"""
