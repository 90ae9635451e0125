"""Where a study's jobs run: ``serial``, ``processes`` (the default) or ``ray``.

An executor takes ``execute(study, job, truth, progress, modules)`` calls and yields
their results as they finish; it never writes a file. The driver stores each result
(``store.store``: atomic writes, ``run.json`` last), so a worker needs no shared disk
and a job that is lost (a killed worker, a lost node) is simply run again: a job is
deterministic, its result the same.

- ``serial``: in this process, in order.
- ``processes``: a pool of ``jobs`` local processes (fork for CPU studies, spawn
  where CUDA is or may be in use), each exiting when the driver dies.
- ``ray``: tasks on a Ray cluster (``pip install -e ".[ray]"``): ``address=None``
  starts a local cluster of ``jobs`` CPUs for the study and stops it after;
  ``"auto"`` or ``"HOST:PORT"`` joins a running one (``ray start --head``). A task
  asks for one CPU, and on a GPU study for ``1 / jobs`` of a GPU; a task whose worker
  dies is retried (``max_retries``) by Ray.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from mfverify.study.evaluate import one_thread
from mfverify.study.execute import _worker_init, execute

EXECUTORS = ("serial", "processes", "ray")
RAY_RETRIES = 3


def _call(args):
    return execute(*args)


class Serial:
    name = "serial"

    def __init__(self, **_):
        pass

    def run(self, calls):
        with one_thread():  # as a worker runs; the caller's thread count is restored after
            for args in calls:
                yield _call(args)

    def close(self):
        pass


class Processes:
    name = "processes"

    def __init__(self, jobs: int = 1, start_method: str | None = None, gpu: bool = False, modules=(), **_):
        # CUDA cannot be used in a child forked after the parent touched it (env.json
        # asks for the device name), so GPU studies start their workers with spawn. So
        # do CPU studies in a process that has initialised CUDA: autograd then runs
        # device threads, and a forked child cannot run backward (seen on an H200 when
        # a CPU study followed GPU training in one process). Otherwise CPU studies fork
        # (cheap, and nothing to re-import); both give the same results.
        if start_method is None:
            start_method = "spawn" if gpu or torch.cuda.is_initialized() else "fork"
        self.pool = ProcessPoolExecutor(max_workers=jobs, initializer=_worker_init,
                                        initargs=(tuple(modules), os.getpid()),
                                        mp_context=multiprocessing.get_context(start_method))

    def run(self, calls):
        futures = [self.pool.submit(_call, args) for args in calls]
        for f in as_completed(futures):
            yield f.result()

    def close(self):
        self.pool.shutdown(cancel_futures=True)


CONNECT_TIMEOUT = 10.0  # seconds for a Ray address to accept a connection


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """A Ray cluster's address: ``auto`` (the cluster this machine's ``ray start`` runs) or
    ``HOST:PORT`` (``ray://HOST:PORT`` for Ray Client), whose port must accept a connection
    within ``timeout`` seconds: Ray itself retries an address where nothing listens for
    minutes before it gives up."""
    if address == "auto":
        return
    hostport = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r}: expected auto or HOST:PORT (a Ray cluster's head, e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "no answer" if isinstance(err, socket.timeout) else (err.strerror or str(err))
        raise ValueError(f"--address {address}: no Ray cluster answers there ({reason} within {timeout:g} s); "
                         "start one with `ray start --head` or omit --address for a local cluster") from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install -e \".[ray]\" (or pip install 'ray>=2.9')") from None
    return ray


class Ray:
    name = "ray"

    def __init__(self, jobs: int = 1, address: str | None = None, gpu: bool = False, modules=(), **_):
        ray = import_ray()
        self.ray = ray
        # a worker on this machine imports what the driver can (a user's own objective module)
        paths = [p for p in [os.getcwd(), *sys.path] if p and Path(p).is_dir()]
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}}
        kwargs = {"include_dashboard": False, "log_to_driver": False, "logging_level": "warning",
                  "runtime_env": runtime_env}
        self.owns_cluster = address is None
        try:
            if self.owns_cluster:
                ray.init(address="local", num_cpus=jobs, **kwargs)  # "local": a new cluster, never a running one
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = "a local Ray cluster" if self.owns_cluster else f"the Ray cluster at {address}"
            raise ValueError(f"could not start or join {where}: {err}") from None
        resources = {"num_cpus": 1, "max_retries": RAY_RETRIES}
        if gpu:
            resources["num_gpus"] = 1.0 / max(jobs, 1)
        self.remote = ray.remote(**resources)(_ray_task)
        self.modules = tuple(modules)
        self._truth = {}

    def put_truth(self, case, blob):
        """Each case's truth sent to the cluster once (an object reference per case)."""
        if case not in self._truth:
            self._truth[case] = self.ray.put(blob)
        return self._truth[case]

    def run(self, calls):
        ray = self.ray
        refs = []
        for study, job, truth, progress, modules in calls:
            refs.append(self.remote.remote(study, job, self.put_truth(job.case, truth), False, modules))
        while refs:
            done, refs = ray.wait(refs, num_returns=1)
            yield ray.get(done[0])

    def close(self):
        # a cluster started for the study is stopped; one joined is only left
        self.ray.shutdown()


def _ray_task(study, job, truth, progress, modules):
    torch.set_num_threads(1)
    return _call((study, job, truth, progress, modules))


def make_executor(name: str, **options):
    if name not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    return {"serial": Serial, "processes": Processes, "ray": Ray}[name](**options)
