"""The command-line process keeps large blocks on glibc's heap (``medseg/_allocator.py``);
a process that imports medseg as a library is left as it is."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# where a 16 MiB block from malloc comes from: mmap (counted in mallinfo2's hblkhd) under
# glibc's default thresholds, the heap once tuned
PROBE = textwrap.dedent("""
    import atexit, ctypes, runpy, sys

    def probe():
        libc = ctypes.CDLL("libc.so.6")
        if not hasattr(libc, "mallinfo2"):
            print("no-mallinfo2", flush=True)
            return

        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                        "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc.mallinfo2.restype = Info
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        before = libc.mallinfo2().hblkhd
        p = libc.malloc(16 << 20)
        mapped = libc.mallinfo2().hblkhd - before
        libc.free(p)
        print("mapped" if mapped >= 16 << 20 else "heap", flush=True)

""")


def _probe(run: str) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE + textwrap.dedent(run)],
                         capture_output=True, text=True, check=True).stdout.split()
    if "no-mallinfo2" in out:
        pytest.skip("this C library has no mallinfo2")
    return out[-1]


def test_the_command_line_process_keeps_large_blocks_on_the_heap():
    assert _probe("probe()") == "mapped"  # glibc's defaults: the probe sees the difference
    assert _probe("""
        from medseg._allocator import tune_allocator
        assert tune_allocator() == {"mmap_threshold": True, "trim_threshold": True}
        probe()
    """) == "heap"
    # python -m medseg.cli: the probe runs among the exit handlers of its last step
    assert _probe("""
        atexit.register(probe)
        sys.argv = ["medseg", "--version"]
        runpy.run_module("medseg.cli", run_name="__main__")
    """) == "heap"


def test_importing_medseg_as_a_library_leaves_the_allocator_alone():
    assert _probe("import medseg, medseg.api, medseg.cli\nprobe()") == "mapped"


def test_medseg_malloc_default_keeps_glibcs_thresholds():
    assert _probe("""
        import os
        os.environ["MEDSEG_MALLOC"] = "default"
        from medseg._allocator import tune_allocator
        assert tune_allocator() == {}
        probe()
    """) == "mapped"
