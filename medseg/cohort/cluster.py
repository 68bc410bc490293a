"""A cohort on Ray workers: one model per worker, lost queries retried.

Without ``--ray-address`` medseg starts a cluster of its own and never adopts one recorded
in shared temporary state or ``RAY_ADDRESS``: ``address="local"``, its sockets and logs
inside a private temporary folder (mode 0700), no dashboard, and Ray's token
authentication with a fresh token that lives only in the environment of medseg's
processes (never in a file). Ray (2.60) binds its GCS and raylet servers on every
interface and has no setting that keeps a local cluster on the loopback interface, so the
token is what keeps other machines and other users out. With ``--ray-address`` the named
cluster is used; it is checked to accept connections (within :data:`CONNECT_TIMEOUT_S`)
before any work.

A worker that dies (the system's out-of-memory killer, a crash) loses its query, which is
given to a remaining worker, at most :data:`RETRIES` times; when no worker is left, the
queries not done are recorded as failed. Ray's own SIGTERM handler is replaced by the
caller's again, so a signal to the driver ends the run like Ctrl-C (summary written, exit
143).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._lazy import lazy_import
from ..api import Segmenter
from ..config import CohortSpec, ModelConfig
from ..errors import DeviceError, MedsegError
from .runner import CohortRunner, Job, failed_row

ray = lazy_import("ray", install="pip install 'medseg[ray]'")
torch = lazy_import("torch")

CONNECT_TIMEOUT_S = 10.0  # a named cluster must accept a connection within this
RETRIES = 1  # times a query whose worker died is given to another worker


def check_reachable(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A named cluster's address accepts connections (before any work); ``auto`` and none
    are Ray's to resolve."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise DeviceError(f"ray_address {address}: no Ray cluster answers there ({why}); "
                          "start one with `ray start --head`, or drop the option for a local "
                          "cluster", option="ray_address") from None


@contextlib.contextmanager
def cluster(spec: CohortSpec) -> Iterator[None]:
    """Ray initialised for this cohort (see the module docstring); shut down afterwards."""
    try:
        ray.is_initialized()
    except MedsegError as exc:
        raise MedsegError(f"workers > 1 needs Ray: pip install 'medseg[ray]' (or run with "
                          f"--workers 1); {exc}") from None
    if ray.is_initialized():  # the caller's own session (e.g. a notebook): used as it is
        yield
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    with _own_environment(spec.ray_address is None) as tmp:
        kwargs: dict[str, Any] = {"num_cpus": spec.workers, "_temp_dir": tmp} if tmp else {}
        ray.init(address=spec.ray_address or "local", log_to_driver=False,
                 include_dashboard=False, logging_level=logging.ERROR, **kwargs)
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)  # Ray's handler would exit without a word
        try:
            yield
        finally:
            ray.shutdown()


@contextlib.contextmanager
def _own_environment(local: bool) -> Iterator[str | None]:
    """For a local cluster: a private temporary folder and a token for this run only."""
    if not local:
        yield None
        return
    private = tempfile.mkdtemp(prefix="medseg-ray-")  # 0700: only this user can enter
    tmp = os.path.join(private, "r")  # Ray opens its own folder to everyone (0777)
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _reread_ray_config()
    try:
        yield tmp
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reread_ray_config()
        shutil.rmtree(private, ignore_errors=True)


def _reread_ray_config() -> None:
    """Ray's native settings read the environment again (as Ray itself does when it turns
    token authentication on), also when Ray was imported before; a Ray without them (older
    than token authentication) needs nothing."""
    raylet = getattr(ray, "_raylet", None)
    config = getattr(raylet, "Config", None)
    if config is not None and hasattr(config, "initialize"):
        config.initialize("")
    loader = getattr(raylet, "AuthenticationTokenLoader", None)
    if loader is not None and hasattr(loader, "instance"):
        loader.instance().reset_cache()  # the token is read again too


def run_on_ray(model: ModelConfig, job: Job, queries: Sequence[Path], stems: Sequence[str],
               progress: Callable[[dict], None] | None = None) -> list[dict]:
    """The cohort on ``job.cohort.workers`` Ray actors; rows in the order of ``queries``."""
    with cluster(job.cohort):
        gpus = ray.cluster_resources().get("GPU", 0)
        on_gpu = gpus >= 1 and model.device in ("auto", "cuda", "gpu")
        worker_cls = ray.remote(num_gpus=1)(_RayWorker) if on_gpu else ray.remote(_RayWorker)
        local = job.cohort.ray_address is None
        threads = max(1, (os.cpu_count() or 1) // job.cohort.workers) if local and not on_gpu \
            else None
        actors = [worker_cls.remote(model, job, threads) for _ in range(job.cohort.workers)]
        rows = _schedule(actors, list(zip(queries, stems)), progress)
    order = {s: i for i, s in enumerate(stems)}
    return sorted(rows, key=lambda r: order[r["stem"]])


def _schedule(actors: list, items: list[tuple[Path, str]],
              progress: Callable[[dict], None] | None) -> list[dict]:
    """Queries to idle actors until all are done; a dead actor's query retried elsewhere."""
    queue, idle, running = deque(items), list(actors), {}
    tries: Counter = Counter()
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if progress:
            progress(row)

    while queue or running:
        while queue and idle:
            actor, item = idle.pop(), queue.popleft()
            running[actor.run.remote(*item)] = (actor, item)
        if not running:  # every worker died
            for q, s in queue:
                emit(failed_row(q, s, "no Ray worker left (each one died: out of memory?)", 0))
            break
        (ref,), _ = ray.wait(list(running), num_returns=1)
        actor, (q, s) = running.pop(ref)
        try:
            row = ray.get(ref)
        except ray.exceptions.RayActorError:
            tries[s] += 1
            warnings.warn(f"a Ray worker died while segmenting {q}; "
                          f"{'given to another worker' if tries[s] <= RETRIES else 'recorded as failed'}",
                          stacklevel=2)
            if tries[s] <= RETRIES:
                queue.append((q, s))
            else:
                emit(failed_row(q, s, f"its Ray worker died {tries[s]} times (out of "
                                "memory, or a crash)", 0))
            continue
        except ray.exceptions.RayError as exc:
            row = failed_row(q, s, exc, 0)
        idle.append(actor)
        emit(row)
    return rows


class _RayWorker:
    """One model per worker process."""

    def __init__(self, model: ModelConfig, job: Job, threads: int | None = None):
        if threads:  # the local machine's cores shared among its workers
            torch.set_num_threads(threads)
        self.runner = CohortRunner(Segmenter(model), job)

    def run(self, query: Path, stem: str) -> dict:
        return self.runner.run([query], [stem])[0]

    def pid(self) -> int:
        return os.getpid()
