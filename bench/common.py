"""What every benchmark shares: timing a call, the CPU seconds of processes (from /proc), the CPU and the instruction
set the numbers were measured with, and printing a markdown table."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def median_ms(function: Callable[[], object], repeats: int, warm_up: bool = False) -> float:
    """Median wall time of ``function()`` over ``repeats`` calls, in milliseconds (after one untimed call if
    ``warm_up``, e.g. to compile a new shape)."""
    if warm_up:
        function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    """Every live process's parent, by process id."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def _total_cpu(pids) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
    return total


def browser_cpu(server: int) -> float:
    """CPU seconds of this process's live descendants other than the server and its children: Playwright's driver
    and Chromium."""
    parents = _parents()

    def ours(pid: int) -> bool:
        ancestor = parents.get(pid)
        while ancestor not in (None, 0, 1, server, os.getpid()):
            ancestor = parents.get(ancestor)
        return ancestor == os.getpid() and pid != server

    return _total_cpu(pid for pid in parents if ours(pid))


def children_cpu(pid: int) -> float:
    """CPU seconds of the live children of ``pid`` (helper processes a server starts)."""
    return _total_cpu(child for child, parent in _parents().items() if parent == pid)


# The environment that caps each library's instruction set at AVX2 (``--isa avx2``): oneDNN (TensorFlow's matmuls
# and softmax, PyTorch's mkldnn ops), PyTorch's own vectorised kernels (ATen), MKL (PyTorch's GEMM) and XLA.
# TensorFlow's Eigen kernels are compiled for AVX only (no run-time dispatch), so they run the same code uncapped.
ISA_CAPS = {
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "XLA_FLAGS": "--xla_cpu_max_isa=AVX2",
    },
}
# /proc/cpuinfo flag -> the name printed, in order; AVX-512 subsets are joined as "AVX-512F/BW/...".
_VECTOR_FLAGS = {"sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "avx_vnni": "AVX-VNNI"}
_AVX512 = {"avx512f": "F", "avx512dq": "DQ", "avx512cd": "CD", "avx512bw": "BW", "avx512vl": "VL",
           "avx512ifma": "IFMA", "avx512vbmi": "VBMI", "avx512_vbmi2": "VBMI2", "avx512_vnni": "VNNI",
           "avx512_bf16": "BF16", "avx512_fp16": "FP16", "avx512_bitalg": "BITALG", "avx512_vpopcntdq": "VPOPCNTDQ"}
_AMX = {"amx_tile": "TILE", "amx_bf16": "BF16", "amx_int8": "INT8"}


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU's model name, core count and vector extensions, e.g. "AMD EPYC (2 cores), AVX AVX2 FMA
    AVX-512F/BW/VL/VNNI/BF16", from ``cpuinfo`` (the text of /proc/cpuinfo; read when None), followed by the
    instruction-set cap in force (``ISA_CAPS``), if any."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    extensions = [name for flag, name in _VECTOR_FLAGS.items() if flag in flags]
    for prefix, subsets in (("AVX-512", _AVX512), ("AMX-", _AMX)):
        present = [name for flag, name in subsets.items() if flag in flags]
        if present:
            extensions.append(prefix + "/".join(present))
    model = fields.get("model name", "unknown CPU")
    text = f"{model} ({os.cpu_count()} cores), {' '.join(extensions) or 'no vector extensions listed'}"
    cap = isa_cap()
    return text if cap is None else f"{text}; capped to {cap.upper()} ({' '.join(_cap_settings(cap))})"


def isa_cap() -> str | None:
    """The ``ISA_CAPS`` entry whose settings are all in this process's environment, or None (uncapped)."""
    for name in ISA_CAPS:
        if all(value in os.environ.get(key, "").split() for key, value in ISA_CAPS[name].items()):
            return name
    return None


def _cap_settings(name: str) -> list[str]:
    return [f"{key}={value}" for key, value in ISA_CAPS[name].items()]


def capped_environment(name: str | None, threads: int | None = None,
                       environment: dict[str, str] | None = None) -> dict[str, str]:
    """``environment`` (default: this process's) with the ``ISA_CAPS[name]`` settings (none for None; XLA_FLAGS keeps
    its other flags) and, given ``threads``, each framework's thread count set to it (TensorFlow's intra-op pool
    and one inter-op thread; PyTorch's OpenMP threads, ``bench_threads``)."""
    environment = dict(os.environ if environment is None else environment)
    if threads is not None:
        environment.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS="1",
                           OMP_NUM_THREADS=str(threads))
    for key, value in ISA_CAPS.get(name, {}).items():
        if key == "XLA_FLAGS":
            kept = [flag for flag in environment.get(key, "").split() if not flag.startswith("--xla_cpu_max_isa")]
            value = " ".join([*kept, value])
        environment[key] = value
    return environment


def bench_threads() -> int:
    """The threads each framework may use: OMP_NUM_THREADS when set (``--threads``), else every core."""
    return int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)


def print_table(title: str, rows: list[dict]) -> None:
    """A markdown table of ``rows`` (dicts with the same keys) under ``title``, with the CPU it was measured on and
    how busy the machine was (its load average over the last minute, when the table is printed)."""
    print(f"\n### {title}\n")
    count = bench_threads()
    threads = f"; {count} thread{'' if count == 1 else 's'} per framework" if "TF_NUM_INTRAOP_THREADS" in os.environ \
        else ""
    print(f"CPU: {cpu_description()}{threads}; load average {os.getloadavg()[0]:.1f}\n")
    headers = list(rows[0])
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(row.get(h, "")) for h in headers) + " |")
