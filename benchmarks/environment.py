"""What a figure was measured on: CPU, threads, library versions, load; process memory; import time."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

from restr.benchmarks.timing import summarize

_CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "asimd", "sve")
_LIBRARIES = ("numpy", "onnxruntime", "onnx", "torch", "tensorrt", "PIL")


def cpu_info() -> dict:
    """CPU model name and its vector-extension flags (from /proc/cpuinfo where there is one)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model name") and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": name, "flags": [f for f in _CPU_FLAGS if f in flags]}


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's total."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def environment(threads: int) -> dict:
    """The environment block of a benchmark run (versions of the libraries that are imported)."""
    versions = {"python": platform.python_version()}
    try:
        from importlib.metadata import version

        versions["restr"] = version("restr")
    except Exception:  # not installed as a distribution (running from a source tree)
        pass
    for lib in _LIBRARIES:
        mod = sys.modules.get(lib)
        if mod is not None:
            versions["Pillow" if lib == "PIL" else lib] = getattr(mod, "__version__", "?")
    env = {
        "cpu": cpu_info(),
        "logical_cpus": os.cpu_count(),
        "available_cpus": available_cpus(),
        "threads": threads,
        "platform": platform.platform(),
        "versions": versions,
        "loadavg_start": list(os.getloadavg()),
    }
    ort = sys.modules.get("onnxruntime")
    if ort is not None:
        env["onnxruntime_providers"] = list(ort.get_available_providers())
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch_threads"] = torch.get_num_threads()
    return env


# -- memory --------------------------------------------------------------------------------------


def rss_mb() -> float:
    """The process's current resident set size in MiB."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False where not possible.

    Linux 4.0+: writing 5 to /proc/self/clear_refs. Without it, `peak_rss_mb` is the high-water
    mark since the process started.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's RSS high-water mark in MiB (VmHWM since the last reset, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError):
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return kb / (2**20 if sys.platform == "darwin" else 1024.0)


# -- import time ---------------------------------------------------------------------------------

_IMPORT_PROBE = """
import sys, time
t0 = time.perf_counter()
import {modules}
t1 = time.perf_counter()
print((t1 - t0) * 1000.0, int("torch" in sys.modules), int("onnxruntime" in sys.modules))
"""


def import_time(modules: str = "restr.runtime", runs: int = 5) -> dict:
    """Milliseconds to `import modules` in a fresh interpreter (interpreter start-up not included).

    Returns the statistics and whether the import pulled in torch / onnxruntime.
    """
    samples, torch_loaded, ort_loaded = [], False, False
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE.format(modules=modules)], capture_output=True, text=True, timeout=120
        )
        if out.returncode != 0:
            return {"modules": modules, "error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
        ms, has_torch, has_ort = out.stdout.split()
        samples.append(float(ms))
        torch_loaded |= bool(int(has_torch))
        ort_loaded |= bool(int(has_ort))
    return {"modules": modules, "ms": summarize(samples), "imports_torch": torch_loaded, "imports_onnxruntime": ort_loaded}
