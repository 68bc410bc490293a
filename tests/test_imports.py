"""Imports from several threads: medseg loads the model and the augmentation library in
the background while the scans are read, so its imports must be safe side by side."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from interrupting import interrupted_at

import medseg

# a package whose set-up takes a while and then takes a name from its own submodule, which
# uses the package (what scipy does). Asked for by another thread while the package is
# being set up, the submodule used to meet a cross-thread import cycle: Python hands the
# background thread the half-run submodule, its import fails and takes the package out of
# sys.modules, and the other thread's import ends in ``KeyError: 'slowpkg'``.
_PACKAGE = {
    "__init__.py": "import time\ntime.sleep(0.6)\nfrom .sub import VALUE\n",
    "sub.py": "import time\ntime.sleep(0.1)\nimport slowpkg\nVALUE = 42\n",
}


def _run(code: str, path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=path,
                          capture_output=True, text=True, timeout=120)


def test_a_module_used_while_a_background_import_sets_its_package_up(tmp_path):
    pkg = tmp_path / "slowpkg"
    pkg.mkdir()
    for name, text in _PACKAGE.items():
        (pkg / name).write_text(text)
    done = _run("""
        import sys, time
        sys.path.insert(0, ".")
        from medseg._lazy import import_in_background, lazy_import
        thread = import_in_background(["slowpkg"])
        time.sleep(0.2)  # the package is being set up in the background
        sub = lazy_import("slowpkg.sub")
        print("value", sub.VALUE, "package", "slowpkg" in sys.modules)
        thread.join()
        print("background", sys.modules["slowpkg"].VALUE)
    """, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["value", "42", "package", "True", "background", "42"]


def test_no_medseg_module_uses_a_lazy_module_when_imported():
    """The rule that keeps the import lock free of lock-order hangs (``medseg._lazy``):
    importing any medseg module loads none of the heavy libraries."""
    names = [m.name for m in pkgutil.walk_packages(medseg.__path__, "medseg.")
             if m.name not in ("medseg.engine.predictor", "medseg.transforms", "medseg.__main__")]
    done = _run(f"""
        import importlib, sys
        for name in {names!r}:
            importlib.import_module(name)
        heavy = ("torch", "sam2", "SimpleITK", "scipy", "albumentations", "pydicom",
                 "highdicom", "matplotlib", "monai", "nibabel", "cv2", "skimage")
        print(sorted(m for m in sys.modules if m.split(".")[0] in heavy))
    """, ".")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def test_the_background_importer_gives_way_to_a_thread_that_asks(tmp_path, monkeypatch):
    """Between its modules the background importer lets a thread that asked meanwhile go
    first (a plain lock lets the releasing thread take it straight back)."""
    from medseg import _lazy

    order: list[str] = []
    monkeypatch.setattr(sys, "medseg_test_order", order, raising=False)
    for name, wait in (("bg_first", 0.4), ("bg_second", 0.0), ("fg_asked", 0.0)):
        (tmp_path / f"{name}.py").write_text(
            f"import sys, time\ntime.sleep({wait})\nsys.medseg_test_order.append({name!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = _lazy.import_in_background(["bg_first", "bg_second"])
    time.sleep(0.2)  # the background thread is importing its first module
    _lazy.import_module("fg_asked")
    thread.join()
    assert order == ["bg_first", "fg_asked", "bg_second"]
    assert not _lazy._IMPORTING.asking
    for name in ("bg_first", "bg_second", "fg_asked"):
        sys.modules.pop(name)


_LOCK_INTERRUPTED = r"""
import sys, threading, time
sys.path[:0] = [".", TESTS]
from interrupting import free, interrupted_at
from medseg import _lazy

k = 1
while True:
    held = threading.Event()

    def hold(held=held):
        with _lazy._IMPORTING.lock:
            held.set()
            time.sleep(0.02)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    held.wait()
    sys.modules.pop("plain_module", None)
    interrupted = interrupted_at(k, lambda: _lazy.import_module("plain_module"))
    holder.join(5)
    assert not holder.is_alive() and free(_lazy._IMPORTING.lock), f"lock stuck at point {k}"
    if not interrupted:
        break
    k += 1
    _lazy._IMPORTING.asking.clear()  # an entry an interruption left (bounded by GIVE_WAY_S)
print("points", k - 1)
"""


def test_an_interruption_while_waiting_for_the_import_lock_leaves_it_whole(tmp_path):
    """A signal at any point of waiting for, taking or letting go of the import lock
    surfaces as itself and leaves the lock to others (a lock written in Python ended in
    ``RuntimeError: release unlocked lock`` and a cohort stopped by SIGTERM exited 1, or
    hung). In a child process, which a hang cannot hold up."""
    (tmp_path / "plain_module.py").write_text("VALUE = 1\n")
    tests = str(Path(__file__).parent)
    done = _run(_LOCK_INTERRUPTED.replace("TESTS", repr(tests)), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) >= 5  # the waiting was interrupted at several points


def test_an_interruption_while_waiting_for_a_background_call_surfaces_as_itself():
    """Waiting for work done in a thread (the query read ahead, the model loading, a cohort
    step) ends in the interruption itself at any point, and the work's value stays there
    for the next wait (``concurrent.futures`` could end in ``release unlocked lock``)."""
    from medseg._threads import Pending

    k = 1
    while True:
        work = Pending(lambda: time.sleep(0.02) or 42)
        interrupted = interrupted_at(k, lambda: work.result())  # noqa: B023
        assert work.result(5) == 42
        if not interrupted:
            break
        k += 1
    assert k > 3  # the waiting was interrupted at several points


def test_a_background_call_raises_its_error_and_times_out():
    from medseg._threads import Pending

    def fail():
        raise ValueError("bad input")

    failing = Pending(fail)
    with pytest.raises(ValueError, match="bad input"):
        failing.result(5)
    assert failing.done()
    slow = Pending(time.sleep, 0.5)
    with pytest.raises(TimeoutError):
        slow.result(0.01)
    assert not slow.done()
    assert slow.result(5) is None
