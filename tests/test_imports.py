"""Imports from several threads: medseg loads the model and the augmentation library in
the background while the scans are read, so its imports must be safe side by side."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap
import threading
import time

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


def test_imports_take_turns_in_the_order_asked():
    """A thread importing module after module lets a thread that asked meanwhile go first;
    the lock is re-entrant (an import may use a lazy module)."""
    from medseg._lazy import _Turns

    turns, order, asked = _Turns(), [], threading.Event()

    def other():
        asked.set()
        with turns:
            order.append("other")

    with turns:
        with turns:
            pass
        thread = threading.Thread(target=other)
        thread.start()
        asked.wait()
        time.sleep(0.2)  # the other thread now waits for its turn
    with turns:  # asked again at once by the thread that just let go
        order.append("again")
    thread.join()
    assert order == ["other", "again"]
