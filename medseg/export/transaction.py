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
from collections.abc import Callable, Iterator, Sequence
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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while files are moved into place (POSIX main thread)."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


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


class OutputTransaction:
    """All-or-nothing writing of several files (the only way medseg writes outputs).

    ``add(path, writer)`` calls ``writer(tmp)`` on a hidden temporary file beside ``path``.
    Leaving the ``with`` block without error moves every file into place; with
    ``overwrite=False`` a destination that appeared meanwhile (another run) is a conflict.
    On any error, Ctrl-C or SIGTERM, temporaries are removed and replaced files restored.
    """

    def __init__(self, overwrite: bool = True, protected: frozenset[Path] = frozenset()) -> None:
        self.overwrite = overwrite
        self.protected = protected  # inputs of the run: never replaced, whatever is asked
        self._staged: list[tuple[Path, Path]] = []

    def __enter__(self) -> OutputTransaction:
        return self

    def add(self, path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
        path = Path(path)
        suffix = "".join(path.suffixes[-2:])[-16:] or ".tmp"
        try:
            fd, tmp = tempfile.mkstemp(prefix=".medseg-", suffix=f".part{suffix}", dir=path.parent)
            os.close(fd)
        except OSError as exc:
            raise explain_os_error(path, exc) from exc
        self._staged.append((Path(tmp), path))
        try:
            writer(Path(tmp))
        except OSError as exc:
            raise explain_os_error(path, exc) from exc
        except RuntimeError as exc:  # SimpleITK raises RuntimeError for I/O failures
            raise _explain_runtime_error(path, exc) from exc
        return path

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
        done: list[tuple[Path, Path | None]] = []  # (destination, backup of what it replaced)
        with _signals_held(), _folder_lock([d.parent for _, d in self._staged]):
            try:
                for tmp, dst in self._staged:
                    done.append((dst, self._move(tmp, dst)))
            except BaseException:
                for dst, backup in reversed(done):
                    with contextlib.suppress(FileNotFoundError):
                        dst.unlink()
                    if backup is not None:
                        os.replace(backup, dst)
                raise
            for _, backup in done:
                if backup is not None:
                    backup.unlink()

    def _move(self, tmp: Path, dst: Path) -> Path | None:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        backup = None
        if _resolve(dst, strict=False) in self.protected:
            raise OutputError(f"{dst}: would replace an input of this run; nothing was written")
        if dst.exists() or dst.is_symlink():
            if dst.is_dir():
                raise OutputError(f"{dst}: is a folder; an output file cannot replace it")
            if not self.overwrite:
                raise OutputError(f"{dst}: appeared while this run was working (another medseg "
                                  "run writing the same outputs?); nothing was written")
            backup = dst.with_name(f".medseg-{os.getpid()}-{dst.name[-40:]}.bak")
            os.replace(dst, backup)
        try:
            os.replace(tmp, dst)
        except OSError as exc:
            if backup is not None:
                os.replace(backup, dst)
            raise explain_os_error(dst, exc) from exc
        return backup


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
