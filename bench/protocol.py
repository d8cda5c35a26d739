"""Many visitors, as the server sees them: N protocol-level clients against one Headlight server (`make bench`, or
`python -m bench load --clients 8 32 64 [--changes 20] [--url http://127.0.0.1:PORT] [--pid PID] [--json]`).

Each client speaks Streamlit's own WebSocket protocol as the browser's frontend does (the installed Streamlit's
``BackMsg``/``ForwardMsg`` protobufs), without drawing anything:

- it pings ``/_stcore/health`` (which sets the ``_streamlit_xsrf`` cookie) and ``/_stcore/host-config``, then opens
  ``/_stcore/stream`` with the subprotocols ``["streamlit", <xsrf token>]``, the cookies those answers set (a
  sticky-session proxy's too) and an ``Origin`` header;
- it opens its session with its own text (``?text=...``, the URL parameter the app reads), by sending the first
  ``rerun_script`` with that query string, and waits for the Heatmap of layer 0, head 0;
- then it changes Layer, Head and view (the tab: Heatmap, Token view, Head lines) in turn, each time sending a
  ``rerun_script`` as the frontend does after a widget change: every widget state it set (the widgets' ids read
  from the ``ForwardMsg`` deltas; a widget it never touched keeps its value on the server, as a browser's unchanged
  widget would), the fragment id of the widget's fragment, the URL's query string, and the hashes of the cached
  messages it holds (a ``ref_hash`` answer is read from that cache, which ages as the frontend's does);
- a change's latency is from its ``BackMsg`` to the arrival of the Plotly chart that answers it (the view's chart
  whose title names the new layer and head); the next change is sent once that run has finished (no think time:
  each client is a visitor changing the view back to back). A chart whose tokens are not its own text's (or carry
  another client's word) is "mixed"; a missing chart, an exception element or a lost connection is an error.

All N sessions open at once; the changes start when every session has its first chart (opening runs the encoder
on a new text: its time is reported apart). Server CPU per change (``/proc/PID/stat``, over the changes) and its
peak resident memory (VmHWM, reset at each level through ``/proc/PID/clear_refs`` where allowed, else the peak
since the process started) are read when the server runs on this machine (its pid found from the listening port,
or given with ``--pid``). The browser's own cost of a change (drawing the figure) is ``bench.load``'s, measured
apart in Chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.cookiejar
import itertools
import json
import os
import re
import statistics
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import cpu_seconds

LEVELS = (8, 32, 64)  # concurrent clients in `make bench`
CHANGES = 20  # changes per client
TARGET_P95 = 1.0  # seconds: the target for a change at 32 clients, with 0 errors and 0 mixed results
SEARCH_STEP = 8  # the largest N meeting the target is searched to this many clients (to one below 8)
SEARCH_LEVELS = 5  # levels the search may add
CHANGE_TIMEOUT = 120.0  # seconds a change (or a session's opening) may take before it counts as an error
WARM_FIRST = 580  # the warm-up's clients: the last texts (592 in all), never a level's
WARM_TIMEOUT = 300.0  # seconds a started server may take to warm up (its helper process to stop)
MAX_MESSAGE = 64 * 2**20  # bytes: the largest ForwardMsg a client accepts (a figure is well under 5 MB)
VIEWS = (("Heatmap", "heatmap"), ("Token view", "tokens"), ("Head lines", "lines"))  # tab label, chart key suffix
# Each client's text names an animal and a mood, the pair its own (74 x 8 clients); each a single MiniLM token and
# none of them words the app's figures use themselves.
WORDS = ("cat", "dog", "horse", "bird", "fish", "lion", "tiger", "bear", "wolf", "fox", "sheep", "goat", "cow",
         "pig", "duck", "goose", "owl", "eagle", "crow", "rabbit", "mouse", "rat", "frog", "snake", "whale", "shark",
         "seal", "otter", "deer", "moose", "camel", "zebra", "monkey", "gorilla", "panda", "hen", "donkey", "mule",
         "bull", "ox", "lamb", "pony", "hawk", "dove", "swan", "parrot", "pigeon", "turtle", "lizard", "spider",
         "bee", "ant", "wasp", "moth", "beetle", "crab", "lobster", "squirrel", "bat", "badger", "bison", "elk",
         "buffalo", "dolphin", "penguin", "raven", "turkey", "chicken", "kitten", "puppy", "hound", "jaguar",
         "leopard", "toad")
MOODS = ("happy", "sleepy", "hungry", "lazy", "brave", "quiet", "clever", "gentle")
XSRF_COOKIE = "_streamlit_xsrf"  # its value is the WebSocket's second subprotocol, as the frontend sends it
FINISHED_OK = {0, 3}  # ScriptFinishedStatus: FINISHED_SUCCESSFULLY, FINISHED_FRAGMENT_RUN_SUCCESSFULLY
FINISHED_EARLY = 2  # FINISHED_EARLY_FOR_RERUN: the frontend leaves its cache alone


def client_words(index: int) -> tuple[str, str]:
    """Client ``index``'s own pair of words: an animal and a mood (``WORDS``, ``MOODS``), unique up to 592
    clients."""
    return WORDS[index % len(WORDS)], MOODS[index // len(WORDS) % len(MOODS)]


def client_text(index: int, sentences: int = 1) -> str:
    """Client ``index``'s text: ``sentences`` times a sentence naming its words (15 MiniLM tokens with [CLS] and
    [SEP] for one)."""
    animal, mood = client_words(index)
    return " ".join([f"The {mood} {animal} sat on the mat because the {animal} was tired."] * sentences)


def figure_words(spec: object) -> set[str]:
    """The lower-case words of every string a Plotly figure spec (parsed JSON) holds: its tokens, titles and
    labels; typed arrays (``bdata``, base64) are skipped, their letters being no words."""
    words: set[str] = set()
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            words.update(re.findall(r"[a-z]+", item.lower()))
        elif isinstance(item, dict):
            stack.extend(value for key, value in item.items() if key != "bdata")
        elif isinstance(item, list):
            stack.extend(item)
    return words


def is_own(spec: object, index: int) -> bool:
    """Whether a figure shows client ``index``'s text: its animal and mood are the only ones among the figure's
    words."""
    words = figure_words(spec)
    animal, mood = client_words(index)
    return words & set(WORDS) == {animal} and words & set(MOODS) == {mood}


# ---------------------------------------------------------------------------------------------------------------
# One visitor's connection.


@dataclass
class Chart:
    """A Plotly chart as it arrived: when (``time.perf_counter()``), its element key's name and its figure."""

    arrived: float
    name: str
    spec: dict

    @property
    def title(self) -> str:
        title = self.spec.get("layout", {}).get("title", {})
        return title.get("text", "") if isinstance(title, dict) else str(title)


@dataclass
class Run:
    """What one ``rerun_script`` brought back: its charts, the widgets drawn (label -> (id, fragment id), plus
    "view" for the tabs), the exceptions shown, and how the run finished."""

    started: float
    charts: list[Chart] = field(default_factory=list)
    widgets: dict[str, tuple[str, str]] = field(default_factory=dict)
    exceptions: list[str] = field(default_factory=list)
    slider_max: dict[str, int] = field(default_factory=dict)
    status: int | None = None


class MessageCache:
    """The frontend's ForwardMsg cache: cacheable messages by hash, each with the run count it was last used at;
    after a run finishes, messages older than ``max_age`` runs are dropped (a fragment run ages only its own)."""

    def __init__(self) -> None:
        self.messages: dict[str, tuple[object, int, str]] = {}  # hash -> (ForwardMsg, run count, fragment id)
        self.runs = 0
        self.max_age = 2

    def resolve(self, message):
        """``message``, or for a ``ref_hash`` the cached message it names (marked used); caches a cacheable one."""
        if message.WhichOneof("type") == "ref_hash":
            cached, _, fragment = self.messages[message.ref_hash]  # a miss is the server's bug: a KeyError
            self.messages[message.ref_hash] = (cached, self.runs, fragment)
            return cached
        if message.metadata.cacheable:
            self.messages[message.hash] = (message, self.runs, message.delta.fragment_id)
        return message

    def finish_run(self, fragments: tuple[str, ...]) -> None:
        self.runs += 1
        for key, (_, used, fragment) in list(self.messages.items()):
            if fragments and fragment not in fragments:
                continue
            if self.runs - used > self.max_age:
                del self.messages[key]


class Visitor:
    """One protocol-level client: a WebSocket on ``/_stcore/stream`` and the state a browser tab keeps."""

    def __init__(self, url: str, query: dict[str, str]) -> None:
        self.url = url.rstrip("/")
        self.query = dict(query)
        self.cache = MessageCache()
        self.states: dict[str, tuple[str, object]] = {}  # widget id -> (WidgetState value field, value)
        self.socket = None
        self.cookies: dict[str, str] = {}
        self.session_id = ""

    async def connect(self) -> None:
        import websockets

        self.cookies = await asyncio.to_thread(self._ping)
        token = self.cookies.get(XSRF_COOKIE, "PLACEHOLDER_AUTH_TOKEN")
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        headers = {"Origin": self.url, **({"Cookie": cookie} if cookie else {})}
        stream = "ws" + self.url.removeprefix("http") + "/_stcore/stream"
        self.socket = await websockets.connect(stream, subprotocols=["streamlit", token],
                                               additional_headers=headers, max_size=MAX_MESSAGE,
                                               open_timeout=CHANGE_TIMEOUT)

    def _ping(self) -> dict[str, str]:
        """The frontend's pings before its WebSocket, the health check and the host config; the cookies their
        answers set, as a browser keeps them: Streamlit's XSRF token, and a proxy's session cookie, if any."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        for path in ("/_stcore/health", "/_stcore/host-config"):
            with opener.open(f"{self.url}{path}", timeout=CHANGE_TIMEOUT) as answer:
                answer.read()
        return {cookie.name: cookie.value for cookie in jar if cookie.value is not None}

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()
            self.socket = None

    def set_widget(self, widget_id: str, kind: str, value: object, query_key: str | None = None) -> None:
        """A widget's new value, sent with every later rerun; a widget bound to the URL shows it there too."""
        self.states[widget_id] = (kind, value)
        if query_key is not None:
            self.query[query_key] = str(value[0] if isinstance(value, list) else value)

    async def rerun(self, fragment_id: str = "") -> Run:
        """Send a ``rerun_script`` BackMsg as the frontend does and read the ForwardMsgs until the run finishes."""
        from streamlit.proto.BackMsg_pb2 import BackMsg

        message = BackMsg()
        state = message.rerun_script
        state.query_string = urllib.parse.urlencode(self.query)
        state.fragment_id = fragment_id
        state.cached_message_hashes.extend(self.cache.messages)
        state.context_info.timezone = "UTC"
        state.context_info.timezone_offset = 0
        state.context_info.locale = "en-US"
        state.context_info.url = f"{self.url}/?{state.query_string}"
        state.context_info.is_embedded = False
        state.context_info.color_scheme = "light"
        for widget_id, (kind, value) in self.states.items():
            widget = state.widget_states.widgets.add(id=widget_id)
            if kind == "double_array_value":
                widget.double_array_value.data.extend(value)
            else:
                setattr(widget, kind, value)
        run = Run(started=time.perf_counter())
        await self.socket.send(message.SerializeToString())
        async with asyncio.timeout(CHANGE_TIMEOUT):
            while run.status is None:
                self._read(await self.socket.recv(), run)
        if run.status != FINISHED_EARLY:
            self.cache.finish_run((fragment_id,) if fragment_id else ())
        return run

    def _read(self, data: bytes, run: Run) -> None:
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        message = ForwardMsg()
        message.ParseFromString(data)
        message = self.cache.resolve(message)
        kind = message.WhichOneof("type")
        if kind == "new_session":
            self.session_id = message.new_session.initialize.session_id
            self.cache.max_age = message.new_session.config.max_cached_message_age or self.cache.max_age
        elif kind == "script_finished":
            run.status = int(message.script_finished)
        elif kind == "delta":
            _read_delta(message.delta, run)


def _read_delta(delta, run: Run) -> None:
    """Note what a delta adds to ``run``: a chart, a widget (label -> id and fragment), an exception."""
    kind = delta.WhichOneof("type")
    if kind == "add_block" and delta.add_block.WhichOneof("type") == "tab_container":
        run.widgets["view"] = (delta.add_block.tab_container.id, delta.fragment_id)
    if kind != "new_element":
        return
    element_kind = delta.new_element.WhichOneof("type")
    element = getattr(delta.new_element, element_kind)
    if element_kind == "plotly_chart":
        name = element.id.rsplit("-chart-", 1)[-1]
        run.charts.append(Chart(time.perf_counter(), name, json.loads(element.spec)))
    elif element_kind == "exception":
        run.exceptions.append(f"{element.type}: {element.message}"[:200])
    elif getattr(element, "id", "") and getattr(element, "label", ""):
        run.widgets[element.label] = (element.id, delta.fragment_id)
        if element_kind == "slider":
            run.slider_max[element.label] = int(element.max)


# ---------------------------------------------------------------------------------------------------------------
# A visit: open with its own text, then change layer, head and view.


@dataclass
class Visit:
    """One client's results: each change's latency (s), its opening time (s), errors, mixed results, what went
    wrong (the first few messages)."""

    latencies: list[float] = field(default_factory=list)
    opened: float | None = None
    errors: int = 0
    mixed: int = 0
    messages: list[str] = field(default_factory=list)
    received: int = 0  # bytes of the figures it received (its share of what the server computed)
    last_chart: dict | None = None  # the last answering figure's spec

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.messages) < 3:
            self.messages.append(message)


@dataclass
class Page:
    """What a visitor knows of the page after its first run: the widgets' ids, their fragment, and the layers and
    heads the sliders offer."""

    layer: str
    head: str
    view: str
    fragment: str
    layers: int
    heads: int

    @classmethod
    def of(cls, run: Run) -> Page:
        (layer, fragment), (head, _), (view, _) = run.widgets["Layer"], run.widgets["Head"], run.widgets["view"]
        return cls(layer, head, view, fragment, run.slider_max["Layer"] + 1, run.slider_max["Head"] + 1)


def changes_of(layers: int, heads: int) -> Iterator[tuple[str, int, int, int]]:
    """Endless changes in turn of Layer, Head and view: (what changed, layer, head, view index); every state of
    the three comes in ``3 * layers * heads * len(VIEWS)`` changes at most."""
    layer = head = view = 0
    for step in itertools.count():
        what = ("layer", "head", "view")[step % 3]
        if what == "layer":
            layer = (layer + 1) % layers
        elif what == "head":
            head = (head + 1) % heads
        else:
            view = (view + 1) % len(VIEWS)
        yield what, layer, head, view


def _check(run: Run, visit: Visit, index: int, view: int, layer: int, head: int) -> Chart | None:
    """The chart answering a change, counted: its view's chart titled with the layer and head asked for (else an
    error), of this client's text (else mixed)."""
    for message in run.exceptions:
        visit.error(f"exception shown: {message}")
    if run.status not in FINISHED_OK:
        visit.error(f"the run finished with status {run.status}")
    title = f"Layer {layer}, head {head}"
    chart = next((c for c in run.charts if c.name == VIEWS[view][1] and c.title.startswith(title)), None)
    if chart is None:
        visit.error(f"no {VIEWS[view][0]} chart titled {title!r} (got {[c.title for c in run.charts]})")
        return None
    visit.received += len(json.dumps(chart.spec))
    visit.last_chart = chart.spec
    if not is_own(chart.spec, index):
        visit.mixed += 1
    return chart


async def open_visit(url: str, index: int, visit: Visit, sentences: int = 1) -> tuple[Visitor, Page] | None:
    """Open client ``index``'s session with its own text (``client_text``); None (an error counted) if it does not
    open."""
    visitor = Visitor(url, {"text": client_text(index, sentences)})
    start = time.perf_counter()
    try:
        await visitor.connect()
        run = await visitor.rerun()
        chart = _check(run, visit, index, 0, 0, 0)
        if chart is None:
            await visitor.close()
            return None
        visit.opened = chart.arrived - start
        return visitor, Page.of(run)
    except Exception as error:  # a refused connection, a timeout, a lost socket: this client's error, counted
        visit.error(f"opening: {type(error).__name__}: {str(error)[:160]}")
        await visitor.close()
        return None


async def change_visit(visitor: Visitor, page: Page, index: int, changes: int, visit: Visit, start: int = 0) -> None:
    """Client ``index``'s ``changes`` changes on its open session, each timed and checked: those of ``changes_of``
    from its ``start``-th on."""
    try:
        for what, layer, head, view in itertools.islice(changes_of(page.layers, page.heads), start, start + changes):
            if what == "layer":
                visitor.set_widget(page.layer, "double_array_value", [float(layer)], "layer")
            elif what == "head":
                visitor.set_widget(page.head, "double_array_value", [float(head)], "head")
            else:
                visitor.set_widget(page.view, "string_value", VIEWS[view][0], "view")
            run = await visitor.rerun(page.fragment)
            chart = _check(run, visit, index, view, layer, head)
            if chart is not None:
                visit.latencies.append(chart.arrived - run.started)
    except Exception as error:  # as in open_visit: counted, and this client stops
        visit.error(f"changing: {type(error).__name__}: {str(error)[:160]}")


# ---------------------------------------------------------------------------------------------------------------
# The server's process, when it runs here.


def listening_pid(url: str) -> int | None:
    """The id of the local process listening on ``url``'s port (from /proc/net/tcp and each process's sockets),
    or None: the host is not this machine, or the process is not ours to read."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == parts.port:  # 0A: LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
    return None


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of process ``pid`` in MB, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak(pid: int) -> bool:
    """Reset process ``pid``'s peak resident size (VmHWM) to its current one; False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def threads_and_files(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


# ---------------------------------------------------------------------------------------------------------------
# A level: N clients at once.


def percentile(samples: list[float], share: float) -> float:
    """The ``share`` quantile of ``samples`` (nearest rank), NaN for none."""
    ordered = sorted(samples)
    return ordered[max(0, round(share * len(ordered)) - 1)] if ordered else float("nan")


async def run_level(url: str, clients: int, changes: int, pids: Iterable[int] = (),
                    visits: list[Visit] | None = None, first: int = 0) -> dict:
    """``clients`` visitors at once, ``changes`` changes each: one result row (see ``summary``); each client's
    results go to ``visits`` (filled here: pass an empty list to read them). The clients are ``first`` ... on
    (``client_text``): a level of new clients brings texts the server has not seen, as new visitors do (the
    figures of a text's layers, heads and views are built once per process, then read from the cache)."""
    pids = list(pids)
    visits = [] if visits is None else visits
    visits[:] = [Visit() for _ in range(clients)]
    peaks_reset = all([reset_peak(pid) for pid in pids])
    opened = await asyncio.gather(*(open_visit(url, first + i, visits[i]) for i in range(clients)))
    cpu = sum(cpu_seconds(pid) for pid in pids)
    start = time.perf_counter()
    await asyncio.gather(*(change_visit(pair[0], pair[1], first + i, changes, visits[i])
                           for i, pair in enumerate(opened) if pair is not None))
    wall = time.perf_counter() - start
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu
    peak = sum(memory_mb(pid)[1] for pid in pids) if pids else None
    await asyncio.gather(*(pair[0].close() for pair in opened if pair is not None))
    return summary(visits, clients, wall, cpu if pids else None, peak, peaks_reset)


def summary(visits: list[Visit], clients: int, wall: float, cpu: float | None, peak: float | None,
            peak_of_level: bool) -> dict:
    """One level's figures: changes done, p50/p95 latency (ms), errors, mixed, changes/s over the changes' wall
    time, server CPU per change (ms) and peak memory (MB; of the level when ``peak_of_level``), opening times."""
    latencies = [sample for visit in visits for sample in visit.latencies]
    opens = [visit.opened for visit in visits if visit.opened is not None]
    return {
        "clients": clients, "changes": len(latencies),
        "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "p95_ms": round(1000 * percentile(latencies, 0.95), 1) if latencies else None,
        "errors": sum(visit.errors for visit in visits), "mixed": sum(visit.mixed for visit in visits),
        "changes_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
        "server_cpu_ms_per_change": round(1000 * cpu / len(latencies), 1) if cpu is not None and latencies else None,
        "server_peak_mb": round(peak) if peak is not None else None, "peak_of_level": peak_of_level,
        "open_p50_ms": round(1000 * statistics.median(opens)) if opens else None,
        "open_p95_ms": round(1000 * percentile(opens, 0.95)) if opens else None,
        "load_average": round(os.getloadavg()[0], 1),
        "messages": [message for visit in visits for message in visit.messages][:5],
    }


def meets_target(row: dict) -> bool:
    """The issue's target: p95 under 1 s, no error, no mixed result, every change done."""
    return (row["errors"] == 0 and row["mixed"] == 0 and row["p95_ms"] is not None
            and row["p95_ms"] < 1000 * TARGET_P95)


def largest_meeting(url: str, changes: int, pids: list[int], rows: list[dict],
                    first: int) -> tuple[int | None, list[dict]]:
    """The largest N meeting the target, from the levels measured (``rows``) and a bisection between the largest
    that met it (0 if none) and the smallest above it that did not (doubling when every level met), to the client
    below ``SEARCH_STEP`` clients and to ``SEARCH_STEP`` above; at most ``SEARCH_LEVELS`` more levels, of new
    clients from ``first`` on."""
    low = max((row["clients"] for row in rows if meets_target(row)), default=0)
    high = min((row["clients"] for row in rows if not meets_target(row) and row["clients"] > low), default=None)
    extra = []
    while len(extra) < SEARCH_LEVELS:
        step = SEARCH_STEP if low >= SEARCH_STEP else 1
        if (high is None and low == 0) or (high is not None and high - low <= step):
            break
        n = 2 * low if high is None else max(low + step, (low + high) // 2 // step * step)
        row = asyncio.run(run_level(url, n, changes, pids, first=first))
        first += n
        extra.append(row)
        low, high = (n, high) if meets_target(row) else (low, n)
    return low or None, extra


def table_row(row: dict) -> dict:
    """A level's row for the markdown table."""
    cpu = row["server_cpu_ms_per_change"]
    return {
        "clients": row["clients"], "changes": row["changes"], "errors": row["errors"], "mixed": row["mixed"],
        "median": f"{row['p50_ms']:.0f} ms" if row["p50_ms"] is not None else "-",
        "p95": f"{row['p95_ms']:.0f} ms" if row["p95_ms"] is not None else "-",
        "changes/s": row["changes_per_s"],
        "server CPU / change": f"{cpu:.0f} ms" if cpu is not None else "-",
        "server peak memory": f"{row['server_peak_mb']} MB" if row["server_peak_mb"] is not None else "-",
        "opening (median / p95)": f"{row['open_p50_ms']} / {row['open_p95_ms']} ms",
        "load average": row["load_average"],
    }


@contextlib.contextmanager
def server(url: str | None, pids: list[int]) -> Iterator[tuple[str, list[int]]]:
    """``url`` and the server's pids (given, or found from its port), or a server started here as `make run`
    does (on 127.0.0.1) once warm: a first session served, any helper process it started gone (the server then
    holds its own model), and a few sessions' changes run."""
    if url is not None:
        found = listening_pid(url)
        yield url, pids or ([found] if found is not None else [])
        return
    from tests.browser_support import streamlit_server

    with streamlit_server() as started:
        asyncio.run(run_level(started, 1, 3, first=WARM_FIRST))
        deadline = time.monotonic() + WARM_TIMEOUT
        while _children(started.pid) and time.monotonic() < deadline:  # a helper process it started, until it stops
            time.sleep(1.0)
        asyncio.run(run_level(started, 4, 6, first=WARM_FIRST))
        yield started, [started.pid]


def _children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    from bench.common import _parents

    return [child for child, parent in _parents().items() if parent == pid]


def measure(levels: Iterable[int], changes: int, url: str | None = None, pids: Iterable[int] = (),
            search: bool = False) -> tuple[list[dict], int | None]:
    """Every level's row, and with ``search`` the largest N meeting the target (else None)."""
    with server(url, list(pids)) as (where, found):
        firsts = list(itertools.accumulate(levels, initial=0))  # each level's clients new to the server
        rows = [asyncio.run(run_level(where, n, changes, found, first=start)) for n, start in zip(levels, firsts)]
        if not search:
            return rows, None
        largest, extra = largest_meeting(where, changes, found, rows, firsts[-1])
    return sorted(rows + extra, key=lambda row: row["clients"]), largest


def main() -> list[dict]:
    """`make bench`'s suite: 8, 32 and 64 clients x 20 changes, the largest N meeting the target, changes/s at
    saturation."""
    rows, largest = measure(LEVELS, CHANGES, search=True)
    table = [table_row(row) for row in rows]
    best = max(rows, key=lambda row: row["changes_per_s"] or 0)
    print(f"\nLargest N with p95 < {TARGET_P95:.0f} s, 0 errors, 0 mixed: {largest}; saturation: "
          f"{best['changes_per_s']} changes/s at {best['clients']} clients")
    return table


def cli(argv: list[str]) -> int:
    """`python -m bench load ...`: the levels asked for, a table (and the errors' first messages); with --json one
    JSON object per level, the last line the last level's."""
    parser = argparse.ArgumentParser(prog="python -m bench load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=list(LEVELS), help="concurrent clients (levels)")
    parser.add_argument("--changes", type=int, default=CHANGES, help="changes per client")
    parser.add_argument("--url", help="a running server (default: start one as `make run` does)")
    parser.add_argument("--pid", type=int, action="append", default=[],
                        help="the server's process id(s) for CPU and memory (default: the one listening on the URL)")
    parser.add_argument("--search", action="store_true", help="also search the largest N meeting the target")
    parser.add_argument("--json", action="store_true", help="print one JSON object per level")
    args = parser.parse_args(argv)
    if min(args.clients) < 1 or args.changes < 1:
        parser.error("--clients and --changes must be at least 1")
    rows, largest = measure(args.clients, args.changes, args.url, args.pid, args.search)
    if args.json:
        for row in rows:
            print(json.dumps(row), flush=True)
        return 0
    from bench.common import print_table

    print_table("Protocol-level clients against one server, MiniLM", [table_row(row) for row in rows])
    for row in rows:
        for message in row["messages"]:
            print(f"- {row['clients']} clients: {message}")
    if args.search:
        print(f"\nLargest N with p95 < {TARGET_P95:.0f} s, 0 errors, 0 mixed: {largest}")
    return 0
