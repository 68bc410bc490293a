"""All-or-nothing writing: the one mechanism that puts every medseg output in place.

Each file is first written to a hidden temporary file beside its destination; when all
are complete they are moved into place together, under a lock on the folder and with
Ctrl-C/SIGTERM held back, so a folder never holds a mixed or partial set. An existing
output is replaced only when asked, and restored if the run fails after all; an input of
the run is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import OutputError
from .paths import _resolve, explain_os_error

try:  # POSIX advisory locks (none on Windows)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def _explain_runtime_error(path: Path, exc: RuntimeError) -> OutputError:
    if "No space" in str(exc):
        return OutputError(f"{path}: no space left on the device; free some space and run again")
    return OutputError(f"{path}: cannot write ({str(exc).splitlines()[0]})")


HELD = (signal.SIGINT, signal.SIGTERM)
WRITERS = 2  # files written at once by OutputTransaction.add_all


@contextlib.contextmanager
def _signals_held(caught: list[int]) -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while files are moved into place: their handlers are
    replaced by one that only notes the signal in ``caught`` (a process-directed signal
    may land on any thread, so masking one thread is not enough). Python delivers signals
    to the main thread only, so a publish in another thread is never interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(signum, frame) -> None:
        caught.append(signum)

    old = {s: signal.getsignal(s) for s in HELD}
    for s in HELD:
        signal.signal(s, note)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _folder_lock(folders: Sequence[Path]) -> Iterator[None]:
    """Exclusive advisory locks on the destination folders (no lock files are created)."""
    if fcntl is None:  # Windows: no advisory locks on folders
        yield
        return
    fds = []
    try:
        for d in sorted({f.resolve() for f in folders}):
            fd = os.open(d, os.O_RDONLY)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # closing releases the lock


class OutputsKept(KeyboardInterrupt):
    """Ctrl-C or SIGTERM arrived while outputs were being put in place: the transaction was
    completed first, so the outputs are whole (``signum``: which signal)."""

    def __init__(self, signum: int, paths: list[Path]):
        super().__init__(f"signal {signum} while writing {len(paths)} outputs")
        self.signum, self.paths = signum, paths


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _owner(name: str) -> int | None:
    """The pid in a ``.medseg-<pid>-...`` name (None for other names)."""
    parts = name.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[0] == ".medseg" and \
        parts[1].isdigit() else None


def recover(folder: Path) -> list[str]:
    """Finish or undo what a killed medseg run left in ``folder``: a journal of a publish
    that was moving files is rolled back (the previous outputs restored, new ones removed),
    one that had finished is cleaned up, and stray temporary files and backups of dead runs
    are removed. Returns what was done, one line each."""
    done: list[str] = []
    if not folder.is_dir():
        return done
    for journal in sorted(folder.glob(".medseg-*.journal")):
        pid = _owner(journal.name)
        if pid is None or _alive(pid):
            continue
        done += _replay(journal)
    for f in sorted(folder.glob(".medseg-*")):
        pid = _owner(f.name)
        if pid is not None and not _alive(pid) and f.is_file() and \
                (".part" in f.name or f.name.endswith(".bak")):
            with contextlib.suppress(OSError):
                f.unlink()
                done.append(f"removed {f.name}, left by an interrupted run")
    return done


def _replay(journal: Path) -> list[str]:
    try:
        rec = json.loads(journal.read_text(encoding="utf-8"))
        moves = [(Path(m["tmp"]), Path(m["dst"]), Path(m["backup"]) if m["backup"] else None)
                 for m in rec["moves"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    out = []
    if rec.get("state") == "moving":  # killed half-way: put the previous set back
        for tmp, dst, backup in reversed(moves):
            if backup is not None and backup.exists():
                os.replace(backup, dst)
                out.append(f"restored {dst.name} as it was before an interrupted run")
            elif backup is None and dst.exists() and not tmp.exists():
                dst.unlink()
                out.append(f"removed {dst.name}, part of an interrupted run's incomplete set")
    for tmp, _, backup in moves:
        for f in (tmp, backup):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.unlink()
    with contextlib.suppress(OSError):
        journal.unlink()
    return out


class OutputTransaction:
    """All-or-nothing writing of several files (the only way medseg writes outputs).

    ``add(path, writer)`` calls ``writer(tmp)`` on a hidden temporary file beside ``path``.
    Leaving the ``with`` block without error moves every file into place: under a lock on
    the folders, with Ctrl-C and SIGTERM held back until it is done, and with a journal
    beside the outputs so that a run killed half-way is undone by the next run in that
    folder (:func:`recover`). With ``overwrite=False`` a destination that appeared meanwhile
    is a conflict. On any error temporaries are removed and replaced files restored; a
    protected path (an input of the run) is never replaced.
    """

    def __init__(self, overwrite: bool = True, protected: frozenset[Path] = frozenset()) -> None:
        self.overwrite = overwrite
        self.protected = protected  # inputs of the run: never replaced, whatever is asked
        self._staged: list[tuple[Path, Path]] = []
        self._token = f"{os.getpid()}-{os.urandom(4).hex()}"

    def __enter__(self) -> OutputTransaction:
        return self

    def add(self, path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
        """Write ``path``'s content now (to a temporary file); it is put in place when the
        transaction ends without error."""
        path = Path(path)
        self._write(path, self._stage(path), writer)
        return path

    def add_all(self, items: Sequence[tuple[Path, Callable[[Path], object]]]) -> None:
        """:meth:`add` for several files, written side by side (compression releases the
        interpreter, so two writers use two cores); the first error is raised."""
        staged = [(Path(p), self._stage(Path(p)), w) for p, w in items]
        if len(staged) < 2:
            for path, tmp, writer in staged:
                self._write(path, tmp, writer)
            return
        with ThreadPoolExecutor(min(WRITERS, len(staged))) as pool:
            futures = [pool.submit(self._write, *item) for item in staged]
        for f in futures:  # all done: leaving the pool joined its threads
            f.result()

    def _stage(self, path: Path) -> Path:
        suffix = "".join(path.suffixes[-2:])[-16:] or ".tmp"
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".medseg-{os.getpid()}-", suffix=f".part{suffix}",
                                       dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise explain_os_error(path, exc) from exc
        self._staged.append((Path(tmp), path))
        return Path(tmp)

    @staticmethod
    def _write(path: Path, tmp: Path, writer: Callable[[Path], object]) -> None:
        try:
            writer(tmp)
        except OSError as exc:
            raise explain_os_error(path, exc) from exc
        except RuntimeError as exc:  # SimpleITK raises RuntimeError for I/O failures
            raise _explain_runtime_error(path, exc) from exc

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._publish()
        finally:
            for tmp, _ in self._staged:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            self._staged.clear()

    def _publish(self) -> None:
        if not self._staged:
            return
        caught: list[int] = []
        try:
            with _signals_held(caught), _folder_lock([d.parent for _, d in self._staged]):
                self._publish_locked()
        except BaseException:
            if caught:  # the publish was undone: let the signal do what it does
                signal.raise_signal(caught[0])
            raise
        if caught:
            raise OutputsKept(caught[0], [d for _, d in self._staged])

    def _publish_locked(self) -> None:
        moves = [(tmp, dst, dst.with_name(f".medseg-{self._token}-{i}.bak"))
                 for i, (tmp, dst) in enumerate(self._staged)]
        journal = self._staged[0][1].with_name(f".medseg-{self._token}.journal")
        self._journal(journal, moves, "moving")
        done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)
        try:
            for tmp, dst, backup in moves:
                done.append((dst, self._move(tmp, dst, backup)))
        except BaseException:
            for dst, backup in reversed(done):
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
                if backup is not None:
                    os.replace(backup, dst)
            journal.unlink(missing_ok=True)
            raise
        self._journal(journal, moves, "done")
        for _, backup in done:
            if backup is not None:
                backup.unlink()
        journal.unlink(missing_ok=True)

    @staticmethod
    def _journal(path: Path, moves: list[tuple[Path, Path, Path]], state: str) -> None:
        """What is being moved where, durable before the first move (for :func:`recover`)."""
        tmp = path.with_name(path.name + ".tmp")
        text = json.dumps({"pid": os.getpid(), "state": state, "moves": [
            {"tmp": str(t), "dst": str(d.absolute()), "backup": str(b.absolute())}
            for t, d, b in moves]})
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _move(self, tmp: Path, dst: Path, backup: Path) -> Path | None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if _resolve(dst, strict=False) in self.protected:
            raise OutputError(f"{dst}: would replace an input of this run; nothing was written")
        kept = None
        if dst.exists() or dst.is_symlink():
            if dst.is_dir():
                raise OutputError(f"{dst}: is a folder; an output file cannot replace it")
            if not self.overwrite:
                raise OutputError(f"{dst}: appeared while this run was working (another medseg "
                                  "run writing the same outputs?); nothing was written")
            os.replace(dst, backup)
            kept = backup
        try:
            os.replace(tmp, dst)
        except OSError as exc:
            if kept is not None:
                os.replace(kept, dst)
            raise explain_os_error(dst, exc) from exc
        return kept


def write_atomic(path: str | os.PathLike, writer: Callable[[Path], object],
                 overwrite: bool = True) -> Path:
    """One file through :class:`OutputTransaction`."""
    with OutputTransaction(overwrite) as tx:
        tx.add(path, writer)
    return Path(path)


def write_json(path: str | os.PathLike, data: object) -> Path:
    """JSON with numpy values converted (NaN/inf become null), written atomically."""
    return write_atomic(path, lambda p: json_file(p, data))


def json_file(path: Path, data: object) -> None:
    text = json.dumps(_finite(data), indent=2, default=_json_default, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")


def _finite(o: object) -> object:
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if not np.isfinite(o) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
