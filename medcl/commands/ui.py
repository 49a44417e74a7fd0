"""``medcl ui``: the MLflow UI over the same store the runs used, on 127.0.0.1 by default.

The MLflow server is a tree of processes (``mlflow ui``, uvicorn and its workers, the job runner and its
huey consumers). It is started in its own session, so that its process group holds the whole tree; when
``medcl ui`` ends (Ctrl-C, ``kill PID``, or the server failing to start) that group is terminated, waited
for and, if needed, killed, so that no server is left listening. The URL is printed once the server answers.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from medcl.commands.flags import add_runs_flag
from medcl.defaults import DEFAULT_RUNS
from medcl.errors import MedclError

STOP_GRACE_S = 10.0  # SIGTERM, then SIGKILL for what is left: huey consumers can take seconds to exit
PROGRESS_EVERY_S = 15.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("ui", help="open the MLflow UI over medcl's tracking store")
    add_runs_flag(p, f"the runs folder training used (default {DEFAULT_RUNS})", default=DEFAULT_RUNS)
    p.add_argument("--tracking-uri", help="tracking store URI instead of <runs>/mlflow.db")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind; keep 127.0.0.1 unless you need remote access (0.0.0.0 makes the store "
        "readable and writable by anyone who can reach this machine)",
    )
    p.add_argument("--port", type=int, default=5000, help="port (default 5000); change it if 5000 is in use")
    p.add_argument(
        "--allowed-hosts",
        metavar="HOSTS",
        help="comma-separated Host headers the server accepts, e.g. lab-gpu.example.org:5000; MLflow accepts "
        "only localhost and private-network addresses by default (and medcl adds --host itself), so set it "
        "when a remote browser gets 'Invalid Host header'",
    )
    p.set_defaults(func=run)


def ui_command(
    uri: str, artifact_root: str | None, host: str, port: int, allowed_hosts: str | None = None
) -> list[str]:
    """The ``python -m mlflow ui`` command line serving ``uri`` on ``host:port``."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def run(args: argparse.Namespace) -> int:
    """Serve the store until Ctrl-C or SIGTERM, then stop the whole server.

    Raises:
        MedclError: The port is out of range or in use, the host is not an address of this machine, no store
            exists at ``--runs``/``--tracking-uri``, or the server exits before answering.
    """
    from medcl.tracking.mlflow_tracking import resolve_store

    host, port = args.host, args.port
    if not 1 <= port <= 65535:
        raise MedclError(f"--port {port} is out of range; choose a port from 1 to 65535 (default 5000)")
    addresses = _resolve_host(host, port)
    uri, artifact_root = resolve_store(args.tracking_uri, args.runs, create=False)
    _check_free(addresses[0], host, port)
    ips = [ipaddress.ip_address(a[4][0]) for a in addresses]
    unspecified = all(ip.is_unspecified for ip in ips)  # 0.0.0.0 or ::, every interface
    allowed_hosts = args.allowed_hosts
    if not all(ip.is_loopback for ip in ips):
        hint = ""
        if allowed_hosts is None and unspecified:
            hint = " (MLflow answers only URLs naming localhost or a private IP; others need --allowed-hosts)"
        elif allowed_hosts is None:
            allowed_hosts = f"{host},{host}:{port}"  # MLflow rejects other Host headers than local/private
        print(
            f"medcl: warning: --host {host} makes the MLflow store {uri} reachable from the network: anyone "
            f"who can connect to port {port} can read and change its runs; keep 127.0.0.1 unless you need "
            f"this{hint}",
            file=sys.stderr,
        )
    if unspecified:  # poll and show the loopback address of the same family
        shown = "[::1]" if addresses[0][0] == socket.AF_INET6 else "127.0.0.1"
    else:
        shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    cmd = ui_command(uri, artifact_root, host, port, allowed_hosts)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, _interrupt)
    proc: subprocess.Popen | None = None
    try:
        print(f"starting the MLflow UI for {uri} on {host}:{port} ...", flush=True)
        # Own session: the server's process group is the whole tree, and a terminal's Ctrl-C reaches only
        # medcl ui, which then stops that group.
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        _wait_until_up(proc, url, host, port)
        note = "listening on all interfaces; Ctrl-C to stop" if unspecified else "Ctrl-C to stop"
        print(f"MLflow UI for {uri} at {url} ({note})", flush=True)
        code = proc.wait()
        raise MedclError(f"the MLflow server stopped by itself with status {code}; its messages are above")
    except KeyboardInterrupt:
        print("stopping the MLflow server ...", flush=True)
        return 0
    finally:
        for s in previous:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        if proc is not None:
            _stop_group(proc)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT end ``medcl ui`` the same way, through its clean-up."""
    raise KeyboardInterrupt


def _resolve_host(host: str, port: int) -> list[tuple]:
    """``getaddrinfo`` of ``host``, or a one-line error for a name that does not resolve."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MedclError(
            f"--host {host!r} is not an address or a known host name ({reason}); use 127.0.0.1 (this "
            "machine only) or 0.0.0.0 (all interfaces)"
        ) from None


def _check_free(address: tuple, host: str, port: int) -> None:
    """Bind ``host:port`` once, as the server will, to turn the usual failures into one sentence."""
    family, kind, proto, _, sockaddr = address
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                reason = f"port {port} on {host} is already in use (another medcl ui or MLflow server?)"
                raise MedclError(f"{reason}; choose another --port") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise MedclError(
                    f"--host {host} is not an address of this machine; use 127.0.0.1 or 0.0.0.0"
                ) from None
            if exc.errno == errno.EACCES:
                raise MedclError(
                    f"no permission to listen on port {port}; ports below 1024 need root, choose one above"
                ) from None
            raise MedclError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _wait_until_up(proc: subprocess.Popen, url: str, host: str, port: int) -> None:
    """Poll ``<url>/health`` until it answers; fail in one line if the server exits first."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never through an HTTP proxy
    start = last = time.monotonic()
    while True:
        code = proc.poll()
        if code is not None:
            raise MedclError(
                f"the MLflow server exited with status {code} before answering on {host}:{port}; "
                "its messages are above"
            )
        try:
            with opener.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY_S:
            print(f"still starting the MLflow server ({now - start:.0f} s) ...", flush=True)
            last = now
        time.sleep(0.5)


def _stop_group(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    pgid = proc.pid  # leader of its own session, hence of its group
    for sig, seconds in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if _group_gone(proc, pgid, seconds):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _group_gone(proc: subprocess.Popen, pgid: int, seconds: float) -> bool:
    """Whether process group ``pgid`` is empty within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        proc.poll()  # reap the direct child, else it stays in the group as a zombie
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
