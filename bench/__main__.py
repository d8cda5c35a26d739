"""Run every benchmark and print one markdown table each: `make bench` (or `python -m bench [names...] [--isa avx2]
[--threads N]`). `python -m bench load --clients N [--changes 20] [--url URL] [--json]` runs the protocol-level load
client alone with its own options (``bench.protocol.cli``), `python -m bench soak [--changes N] [--sessions N]` the
soak (``bench.soak.cli``).

Every table names the CPU it was measured on, its vector extensions and the load average
(``bench.common.print_table``). ``--isa avx2`` runs the named suites in a subprocess whose environment caps both
frameworks' instruction set at AVX2 (``bench.common.ISA_CAPS``), to see how an AVX2-only CPU would rank them; a run
of every suite (no names) ends with the encoder suite so capped. ``--threads N`` gives each framework N threads
(default: every core); one thread per framework compares the kernels alone, which a busy machine disturbs least.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

from bench.common import ISA_CAPS, capped_environment, isa_cap, print_table

SUITES = {
    "encoder": "Encoder trace, MiniLM (6x12, d=384), median of alternating runs",
    "decoder": "Decoder, SmolLM2-135M-shaped Llama (30 layers, 9 / 3 heads, d=576, vocabulary 49,152)",
    "long": "Long inputs (2,048 / 4,096 / 8,192 tokens): SmolLM2-135M-shaped decoder, ModernBERT-base-shaped encoder",
    "families": "Every ported family on its fixture-sized model, against transformers (PyTorch), ~60 tokens",
    "figures": "Figure builders and export",
    "analysis": "Analysis",
    "app": "App in Chromium",
    "load": "Protocol-level clients against one server, MiniLM: 20 changes of layer, head and view each",
    "browser": "One visitor in Chromium, MiniLM: the browser's cost of a layer change",
    "coldstart": "Cold start in Chromium",
    "scrub": "Head scrubbing in Chromium (the slider inside the figure), MiniLM, 128 tokens",
    "corpus": "Corpus pipeline (Beam DirectRunner in memory vs a plain loop), MiniLM, data/ sentences",
    "corpus_tab": "Corpus tab: the query-key scatter of 20,000 points in Chromium (WebGL)",
    "soak": "Soak, one process, MiniLM: one session through 2,000 changes, 200 sessions opened and closed",
}
MODULES = {"load": "protocol", "browser": "load"}  # suites whose module is named otherwise (bench.load: Chromium)
CAPPED_BY_DEFAULT = ("encoder",)  # the suites a run of everything repeats with the instruction set capped at AVX2


def run_suites(names: list[str]) -> int:
    """Run the suites ``names`` in this process, printing their tables."""
    for name in names:
        module_name = f"bench.{MODULES.get(name, name)}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        rows = module.main()  # a suite either returns its rows or prints its own tables
        if rows:
            cap = isa_cap()
            print_table(SUITES[name] + ("" if cap is None else f", instruction set capped at {cap.upper()}"), rows)
        sys.stdout.flush()
    return 0


def run_capped(names: list[str], isa: str | None, threads: int | None = None) -> int:
    """Run the suites ``names`` in a subprocess with the instruction set capped at ``isa`` (None: uncapped) and
    ``threads`` threads per framework (None: every core)."""
    return subprocess.run([sys.executable, "-m", "bench", *names], env=capped_environment(isa, threads)).returncode


def main(argv: list[str]) -> int:
    if argv[:1] in (["load"], ["soak"]) and len(argv) > 1:  # `python -m bench load --clients N ...`: its options
        return importlib.import_module(f"bench.{MODULES.get(argv[0], argv[0])}").cli(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run benchmarks; print a markdown table each.")
    parser.add_argument("names", nargs="*", help=f"suites to run (default: all): {', '.join(SUITES)}")
    parser.add_argument("--isa", choices=sorted(ISA_CAPS), help="cap both frameworks' instruction set")
    parser.add_argument("--threads", type=int, help="threads per framework (default: every core)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in SUITES]
    if unknown:
        print(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(SUITES)}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if (args.isa is not None and isa_cap() != args.isa) or args.threads is not None:
        names = args.names or list(SUITES)
        return run_capped(names, args.isa or isa_cap(), args.threads)
    if args.names:
        return run_suites(args.names)
    return run_suites(list(SUITES)) or run_capped(list(CAPPED_BY_DEFAULT), "avx2")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
