"""``python -m ui.serving.replicas --replicas N --port P``: N app processes behind one nginx, each visitor's session
kept on one of them (``make serve REPLICAS=N``; docs/deploying.md#replicas).

Each replica is ``python -m ui.serving`` (what ``make run`` starts) on its own loopback port, P+1 .. P+N unless
``--backend-ports`` says otherwise. The proxy is Debian's nginx, run in the foreground with a fresh run folder as its
prefix (pid, access log, temporary files): its configuration is ``deploy/nginx.conf.template`` and the site
``deploy/headlight-site.conf.template``, rendered here with the ports; it touches no system file and needs no
privileged port. ``--site`` prints only the rendered site, for a host's own nginx (``deploy/headlight@.service``
runs the replicas there).

How sessions stick, and what happens when a replica dies, is written in the site template. This command does not
restart a replica that died: nginx sends its visitors to the others (on a host, systemd restarts it). It stops when
nginx stops or every replica has, and stops everything it started when it gets SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEPLOY = ROOT / "deploy"
MAIN_TEMPLATE = DEPLOY / "nginx.conf.template"
SITE_TEMPLATE = DEPLOY / "headlight-site.conf.template"
COOKIE = "headlight_replica"  # the cookie naming a visitor's replica (set by nginx, in the site template)
HEADER = "X-Headlight-Replica"  # the response header naming the replica that answered
COOKIE_SECRET = "STREAMLIT_SERVER_COOKIE_SECRET"  # Streamlit's server.cookieSecret: one for every replica
BACKEND_HOST = "127.0.0.1"  # replicas listen on loopback only: visitors reach them through nginx
MAX_REPLICAS = 64
START_TIMEOUT = 180.0  # seconds a replica (Streamlit, the page's modules) or nginx may take to answer its health check
STOP_TIMEOUT = 20.0
FAIL_TIMEOUT = "10s"  # how long nginx leaves a replica alone after it refused a connection
_PLACEHOLDER = re.compile(r"\{\{ *(\w+) *\}\}")


@dataclass(frozen=True)
class Replica:
    """One app process as the proxy sees it: its name (what the cookie and ``X-Headlight-Replica`` say) and port."""

    name: str
    port: int

    @property
    def address(self) -> str:
        return f"{BACKEND_HOST}:{self.port}"


def replicas_on(ports: Sequence[int]) -> list[Replica]:
    """The replicas ``r1 .. rN`` on ``ports`` (N of them, distinct)."""
    if not 1 <= len(ports) <= MAX_REPLICAS:
        raise ValueError(f"Give between 1 and {MAX_REPLICAS} replicas, not {len(ports)}.")
    if len(set(ports)) != len(ports) or not all(1 <= port <= 65535 for port in ports):
        raise ValueError("Each replica needs its own port between 1 and 65535.")
    return [Replica(f"r{index}", port) for index, port in enumerate(ports, 1)]


# ---------------------------------------------------------------------------------------------------------------
# The configuration: the repository's templates with the replicas filled in.


def render(template: str, values: dict[str, str]) -> str:
    """``template`` with each ``{{ name }}`` replaced by ``values[name]``; every placeholder must have a value and
    every value a placeholder (a renamed one fails here, not in nginx)."""
    names = set(_PLACEHOLDER.findall(template))
    if names != set(values):
        raise ValueError(f"Template placeholders {sorted(names)} do not match the values {sorted(values)}.")
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _server(replica: Replica, options: str) -> str:
    return f"    server {replica.address}{options};"


def _upstreams(replicas: list[Replica]) -> str:
    """``headlight_any`` (every replica, fewest connections first) and one ``headlight_<name>`` per replica: that
    replica, the others as backups for when it is down."""
    health = f" max_fails=1 fail_timeout={FAIL_TIMEOUT}"
    blocks = ["upstream headlight_any {\n    least_conn;\n"
              + "\n".join(_server(replica, health) for replica in replicas) + "\n    keepalive 8;\n}"]
    for replica in replicas:
        backups = [_server(other, " backup") for other in replicas if other != replica]
        blocks.append(f"upstream headlight_{replica.name} {{\n" + "\n".join([_server(replica, health), *backups])
                      + "\n    keepalive 8;\n}")
    return "\n".join(blocks)


def site_config(replicas: list[Replica], listen: str, server_name: str = "_") -> str:
    """The nginx site (an ``http``-level snippet) that serves ``replicas`` on ``listen`` (``host:port``)."""
    return render(SITE_TEMPLATE.read_text(), {
        "upstreams": _upstreams(replicas),
        "cookie_routes": "\n".join(f"    {r.name} headlight_{r.name};" for r in replicas),
        "answered_routes": "\n".join(f'    "~(^|, ){re.escape(r.address)}$" {r.name};' for r in replicas),
        "listen": listen,
        "server_name": server_name,
    })


def write_config(run: Path, replicas: list[Replica], listen: str) -> Path:
    """Write nginx's whole configuration into the run folder ``run`` (its prefix); returns the main file's path."""
    (run / "tmp").mkdir(parents=True, exist_ok=True)
    run.chmod(0o755)  # run as root, nginx's workers are `nobody` and keep their temporary files under it
    (run / "tmp").chmod(0o755)
    (run / "headlight.conf").write_text(site_config(replicas, listen))
    main = run / "nginx.conf"
    main.write_text(render(MAIN_TEMPLATE.read_text(), {}))
    return main


# ---------------------------------------------------------------------------------------------------------------
# The processes.


def nginx_path() -> str | None:
    """Debian's nginx (/usr/sbin is not on every user's PATH), or None where it is not installed."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def port_is_free(port: int, host: str = BACKEND_HOST) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Wait until ``url`` (a health check) answers 200; RuntimeError with the end of ``log`` if ``process`` exits
    first, TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url} never answered: its process exited with {process.returncode}:\n{_tail(log)}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            if answer.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def start_replica(replica: Replica, log: Path, streamlit_args: Sequence[str] = (),
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m ui.serving`` on the replica's loopback port, its output in ``log``."""
    command = [sys.executable, "-m", "ui.serving", "--server.address", BACKEND_HOST,
               "--server.port", str(replica.port), "--server.headless", "true",
               "--browser.gatherUsageStats", "false", *streamlit_args]
    with open(log, "wb") as output:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                stderr=subprocess.STDOUT)


def start_nginx(run: Path, config: Path) -> subprocess.Popen:
    """nginx in the foreground with ``run`` as its prefix; its error log (on stderr) goes to ``run/error.log``."""
    nginx = nginx_path()
    if nginx is None:
        raise RuntimeError("nginx is not installed: on Debian, `apt-get install nginx` (as root).")
    with open(run / "error.log", "wb") as output:
        return subprocess.Popen([nginx, "-p", f"{run}/", "-c", str(config), "-e", "stderr", "-g", "daemon off;"],
                                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop ``process`` (``sig``, then SIGKILL after ``STOP_TIMEOUT`` seconds); nothing if it has exited."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Deployment:
    """What ``serve`` started: the proxy's ``url``, the replicas and their processes, nginx, and the run folder
    (``access.log``: one line per request with the replica that answered; ``<name>.log``: each replica's output)."""

    url: str
    run: Path
    replicas: list[Replica]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    nginx: subprocess.Popen | None = None

    @property
    def access_log(self) -> Path:
        return self.run / "access.log"

    def alive(self) -> list[Replica]:
        return [replica for replica in self.replicas if self.processes[replica.name].poll() is None]


@contextlib.contextmanager
def serve(ports: Sequence[int], port: int, host: str = BACKEND_HOST, streamlit_args: Sequence[str] = (),
          env: dict[str, str] | None = None, run: Path | None = None,
          timeout: float = START_TIMEOUT) -> Iterator[Deployment]:
    """Start one replica on each of ``ports`` and nginx on ``host:port`` in front of them; yield once every replica
    and the proxy answer their health checks; stop them all afterwards. ``run``: the run folder (a fresh temporary
    one, removed afterwards, if None)."""
    replicas = replicas_on(ports)
    busy = [p for p in [port, *ports] if not port_is_free(p, host if p == port else BACKEND_HOST)]
    if busy:
        raise RuntimeError(f"Ports already in use: {', '.join(map(str, busy))}. Pick others (--port, --backend-ports).")
    if nginx_path() is None:
        raise RuntimeError("nginx is not installed: on Debian, `apt-get install nginx` (as root).")
    env = {**(os.environ if env is None else env)}
    # Every replica signs cookies (the XSRF token a page sends with an upload) with one secret: a page that moved to
    # another replica keeps working.
    env.setdefault(COOKIE_SECRET, secrets.token_hex(32))
    with contextlib.ExitStack() as stack:
        if run is None:
            run = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="headlight-replicas-")))
        deployment = Deployment(f"http://{host}:{port}", run, replicas)
        stack.callback(_stop_all, deployment)
        for replica in replicas:
            deployment.processes[replica.name] = start_replica(replica, run / f"{replica.name}.log", streamlit_args,
                                                               env)
        for replica in replicas:
            wait_healthy(f"http://{replica.address}/_stcore/health", deployment.processes[replica.name],
                         run / f"{replica.name}.log", timeout)
        deployment.nginx = start_nginx(run, write_config(run, replicas, f"{host}:{port}"))
        wait_healthy(f"{deployment.url}/_stcore/health", deployment.nginx, run / "error.log", timeout)
        yield deployment


def _stop_all(deployment: Deployment) -> None:
    if deployment.nginx is not None:
        stop(deployment.nginx)  # SIGTERM: nginx's fast shutdown (a graceful one waits for every open WebSocket)
    for process in deployment.processes.values():
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in deployment.processes.values():
        stop(process)


# ---------------------------------------------------------------------------------------------------------------
# The command.


def _ports(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("ports are comma-separated numbers, e.g. 8502,8503") from None


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m ui.serving.replicas",
        description="N Headlight processes behind nginx with sticky sessions. Options after `--` go to Streamlit.")
    parser.add_argument("--replicas", type=int, default=2, help="app processes (default 2)")
    parser.add_argument("--port", type=int, default=8501, help="the proxy's port (default 8501)")
    parser.add_argument("--host", default=BACKEND_HOST, help="the proxy's address (default 127.0.0.1: this machine)")
    parser.add_argument("--backend-ports", type=_ports, help="the replicas' loopback ports (default PORT+1 ..)")
    parser.add_argument("--site", action="store_true",
                        help="print the nginx site for these replicas (for a host's own nginx) and exit")
    parser.add_argument("--server-name", default="_", help="the site's server_name (with --site)")
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    streamlit_args = argv[split + 1:]
    if args.backend_ports is None:
        args.backend_ports = [args.port + index for index in range(1, args.replicas + 1)]
    if len(args.backend_ports) != args.replicas:
        parser.error(f"--backend-ports names {len(args.backend_ports)} ports for {args.replicas} replicas")
    return args, streamlit_args


def _supervise(deployment: Deployment) -> int:
    """Report replicas that die; return nginx's exit code when it stops, or 1 when every replica has stopped."""
    reported: set[str] = set()
    while deployment.nginx.poll() is None:
        for replica in deployment.replicas:
            code = deployment.processes[replica.name].poll()
            if code is not None and replica.name not in reported:
                reported.add(replica.name)
                print(f"replica {replica.name} (port {replica.port}) exited with {code}; its visitors go to the "
                      f"others. Its output: {deployment.run / (replica.name + '.log')}", file=sys.stderr, flush=True)
        if not deployment.alive():
            print("every replica has stopped", file=sys.stderr, flush=True)
            return 1
        time.sleep(1.0)
    return deployment.nginx.returncode or 0


def main(argv: Sequence[str]) -> int:
    args, streamlit_args = parse_args(argv)
    replicas = replicas_on(args.backend_ports)
    if args.site:
        print(site_config(replicas, f"{args.host}:{args.port}", args.server_name), end="")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwinds `serve`, which stops everything
    run = Path(tempfile.mkdtemp(prefix="headlight-replicas-"))
    try:
        with serve(args.backend_ports, args.port, args.host, streamlit_args, run=run) as deployment:
            ports = ", ".join(f"{replica.name} on {replica.port}" for replica in replicas)
            print(f"Headlight: {len(replicas)} replicas ({ports}) behind nginx at {deployment.url}\n"
                  f"logs: {run}", flush=True)
            return _supervise(deployment)
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError) as error:
        print(f"python -m ui.serving.replicas: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
