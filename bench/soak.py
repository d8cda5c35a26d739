"""A long day in one process (`python -m bench soak [--changes 2000] [--sessions 200] [--cache-mb 64]`): one
protocol-level session (``bench.protocol``) through 2,000 changes of layer, head and view, then 200 sessions opened
and closed (four at a time), each with its own 54-token text (so each one's trace and figures are new to the
server). Measured on the server's process (/proc/PID): resident memory after the warm-up and after each phase, its
threads and open files, which must come back to the warm-up's counts once the sessions are closed.

The server runs with a small byte budget (``HEADLIGHT_CACHE_MB``, default 64 here: 24 MB for traces, results and
figures, ``ui.inputs.trace_budget``), which the 200 sessions' traces and figures overfill several times: the budget
holding shows as resident memory that stays put while the results the sessions asked for (counted by the clients:
the figures' JSON they received) add up to many times the budget. Resident memory must grow under 10% from the
warm-up's (``GROWTH_LIMIT``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass, field

from bench.protocol import Visit, change_visit, memory_mb, open_visit, percentile, threads_and_files

CHANGES = 2000  # one session's changes
SESSIONS = 200  # sessions opened and closed
AT_ONCE = 4  # sessions open at the same time in the second phase
SENTENCES = 4  # each session's text: its sentence 4 times (54 MiniLM tokens)
CACHE_MB = 64
GROWTH_LIMIT = 0.10  # resident memory may grow this much (a share of the warm-up's) over the soak
SETTLE_SECONDS = 30.0  # how long the threads and open files get to come back to their warm-up counts
WARM_CHANGES = 240  # warm-up: one session through every state of layer x head x view once (6 x 12 x 3 = 216)
WARM_SESSIONS = 120  # ... and this many opened and closed: resident memory climbs over the first ~100 sessions
SESSION_TTL = 5  # seconds the soak's server keeps a closed session (server.disconnectedSessionTTL)


@dataclass
class Sample:
    """The server process at one moment: resident memory (MB), threads, open files."""

    rss_mb: float
    threads: int
    files: int

    @classmethod
    def of(cls, pid: int) -> Sample:
        return cls(memory_mb(pid)[0], *threads_and_files(pid))


@dataclass
class Phase:
    """One phase's outcome: changes and sessions done, errors, mixed results, latencies (s), figure bytes the
    clients received, and the server after it."""

    name: str
    visits: list[Visit] = field(default_factory=list)
    after: Sample | None = None

    @property
    def changes(self) -> int:
        return sum(len(visit.latencies) for visit in self.visits)

    @property
    def errors(self) -> int:
        return sum(visit.errors for visit in self.visits)

    @property
    def mixed(self) -> int:
        return sum(visit.mixed for visit in self.visits)

    @property
    def received_mb(self) -> float:
        return sum(visit.received for visit in self.visits) / 2**20


async def one_session(url: str, index: int, changes: int, pid: int, every: int = 200) -> tuple[Visit, list[Sample]]:
    """Session ``index`` through ``changes`` changes, the server sampled every ``every`` changes."""
    visit, samples = Visit(), []
    opened = await open_visit(url, index, visit, SENTENCES)
    if opened is None:
        return visit, samples
    visitor, page = opened
    for start in range(0, changes, every):
        await change_visit(visitor, page, index, min(every, changes - start), visit, start)
        samples.append(Sample.of(pid))
        if visit.errors:
            break
    await visitor.close()
    return visit, samples


async def open_and_close(url: str, first: int, count: int, changes: int = 1) -> list[Visit]:
    """Sessions ``first`` ... ``first + count - 1``, ``AT_ONCE`` at a time: each opened with its own text, changed
    ``changes`` times, closed."""
    visits = [Visit() for _ in range(count)]

    async def one(offset: int) -> None:
        opened = await open_visit(url, first + offset, visits[offset], SENTENCES)
        if opened is not None:
            await change_visit(*opened, first + offset, changes, visits[offset])
            await opened[0].close()

    for start in range(0, count, AT_ONCE):
        await asyncio.gather(*(one(offset) for offset in range(start, min(start + AT_ONCE, count))))
    return visits


def settle(url: str, pid: int, baseline: Sample | None = None, seconds: float = SETTLE_SECONDS) -> Sample:
    """The server once the closed sessions are forgotten (``SESSION_TTL``, then one session opened and closed) and
    its threads and open files are back to ``baseline``'s counts (or after ``seconds``)."""
    time.sleep(SESSION_TTL + 1)
    asyncio.run(open_and_close(url, 0, 1, changes=0))
    time.sleep(2.0)
    deadline = time.monotonic() + seconds
    sample = Sample.of(pid)
    while baseline is not None and (sample.threads > baseline.threads or sample.files > baseline.files) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
        sample = Sample.of(pid)
    return sample


def soak(url: str, pid: int, changes: int = CHANGES, sessions: int = SESSIONS, warm_changes: int = WARM_CHANGES,
         warm_sessions: int = WARM_SESSIONS) -> dict:
    """Warm up, then the two phases; the measurements (see ``report``)."""
    warm = Phase("warm-up")
    visit, _ = asyncio.run(one_session(url, 0, warm_changes, pid))
    warm.visits = [visit, *asyncio.run(open_and_close(url, 1, warm_sessions))]
    baseline = warm.after = settle(url, pid)
    long = Phase("one session")
    visit, samples = asyncio.run(one_session(url, warm_sessions + 1, changes, pid))
    long.visits, long.after = [visit], Sample.of(pid)
    many = Phase("sessions opened and closed")
    many.visits = asyncio.run(open_and_close(url, warm_sessions + 2, sessions))
    many.after = Sample.of(pid)
    settled = settle(url, pid, baseline)
    peak = max(sample.rss_mb for sample in [*samples, long.after, many.after, settled])
    return {"baseline": baseline, "phases": [warm, long, many], "settled": settled, "peak_mb": peak,
            "growth": (peak - baseline.rss_mb) / baseline.rss_mb}


def passed(result: dict) -> list[str]:
    """What the soak failed (empty: it passed): growth, threads, open files, errors, mixed results."""
    baseline, settled = result["baseline"], result["settled"]
    failures = []
    if result["growth"] >= GROWTH_LIMIT:
        failures.append(f"resident memory grew {100 * result['growth']:.1f}% (limit {100 * GROWTH_LIMIT:.0f}%)")
    if settled.threads > baseline.threads:
        failures.append(f"threads {baseline.threads} -> {settled.threads}")
    if settled.files > baseline.files:
        failures.append(f"open files {baseline.files} -> {settled.files}")
    for phase in result["phases"]:
        if phase.errors or phase.mixed:
            messages = [message for visit in phase.visits for message in visit.messages][:3]
            failures.append(f"{phase.name}: {phase.errors} errors, {phase.mixed} mixed {messages}")
    return failures


def rows(result: dict) -> list[dict]:
    """One table row per phase, then the settled server."""
    baseline = result["baseline"]
    table = []
    for phase in result["phases"]:
        latencies = [sample for visit in phase.visits for sample in visit.latencies]
        table.append({
            "phase": phase.name, "sessions": len(phase.visits), "changes": phase.changes, "errors": phase.errors,
            "mixed": phase.mixed,
            "median / p95": f"{1000 * statistics.median(latencies):.0f} / {1000 * percentile(latencies, 0.95):.0f} ms"
            if latencies else "-",
            "figures received": f"{phase.received_mb:.0f} MB",
            "resident memory after": f"{phase.after.rss_mb:.0f} MB "
                                     f"({100 * (phase.after.rss_mb - baseline.rss_mb) / baseline.rss_mb:+.1f}%)",
            "threads / open files after": f"{phase.after.threads} / {phase.after.files}",
        })
    settled = result["settled"]
    table.append({"phase": "settled (sessions closed)", "resident memory after":
                  f"{settled.rss_mb:.0f} MB ({100 * (settled.rss_mb - baseline.rss_mb) / baseline.rss_mb:+.1f}%)",
                  "threads / open files after": f"{settled.threads} / {settled.files}"})
    return table


def measure(changes: int, sessions: int, cache_mb: int, **warm: int) -> tuple[dict, list[str]]:
    """The soak (``warm``: ``soak``'s warm-up sizes) against a server started here as `make run` does, with a
    ``cache_mb`` byte budget; and what it failed (``passed``)."""
    from tests.browser_support import streamlit_server

    env = {"HEADLIGHT_CACHE_MB": str(cache_mb), "STREAMLIT_SERVER_DISCONNECTED_SESSION_TTL": str(SESSION_TTL)}
    with streamlit_server(env=env) as url:
        result = soak(url, url.pid, changes, sessions, **warm)
    return result, passed(result)


def verdict(result: dict, failures: list[str], cache_mb: int) -> str:
    return (f"Peak resident memory {result['peak_mb']:.0f} MB, {100 * result['growth']:+.1f}% from the warm-up's "
            f"{result['baseline'].rss_mb:.0f} MB (byte budget {cache_mb} MB): "
            + ("passed" if not failures else "FAILED: " + "; ".join(failures)))


def main() -> list[dict]:
    """`make bench`'s suite: the soak's table, after its verdict."""
    result, failures = measure(CHANGES, SESSIONS, CACHE_MB)
    print("\n" + verdict(result, failures, CACHE_MB))
    return rows(result)


def cli(argv: list[str]) -> int:
    """`python -m bench soak [--changes N] [--sessions N] [--cache-mb MB]`: the table and the verdict; exit status 1
    when the soak failed."""
    from bench.common import print_table

    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--changes", type=int, default=CHANGES, help="one session's changes")
    parser.add_argument("--sessions", type=int, default=SESSIONS, help="sessions opened and closed")
    parser.add_argument("--cache-mb", type=int, default=CACHE_MB, help="the server's HEADLIGHT_CACHE_MB")
    args = parser.parse_args(argv)
    result, failures = measure(args.changes, args.sessions, args.cache_mb)
    print_table("Soak, one process, MiniLM", rows(result))
    print("\n" + verdict(result, failures, args.cache_mb))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
