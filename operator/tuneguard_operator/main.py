"""`tuneguard operator`: run the FineTuneJob operator."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (UTC), level, logger, message, any `extra=` fields and the exception;
    python-json-logger, the library kopf's own JSON logging uses (installed as kopf's dependency)."""
    from pythonjsonlogger.json import JsonFormatter

    fmt = JsonFormatter("{asctime}{levelname}{name}{message}", style="{", datefmt="%Y-%m-%dT%H:%M:%SZ",
                        rename_fields={"asctime": "time", "levelname": "level", "name": "logger",
                                       "exc_info": "exception"}, json_default=str)
    fmt.converter = time.gmtime
    return fmt


def setup_logging(log_format: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(json_formatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("asyncio", "urllib3", "kubernetes"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def serve_standby_health(port: int):
    """/healthz for a standby (kopf serves it only once it runs): the pod stays alive while it waits to lead."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            ok = self.path.split("?")[0] == "/healthz"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"standby\n" if ok else b"")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    threading.Thread(target=server.serve_forever, name="standby-health", daemon=True).start()
    return server


def lead(kube, election, metrics, health_port: int, renewing: threading.Event):
    """Block until this operator leads (serving /healthz meanwhile); returns the elector, which renews until
    ``renewing`` is set. Losing the lease later ends the process at once: a reconcile must not run without it."""
    from .leader import LeaderElector

    elector = LeaderElector(kube, election)
    metrics.leader.set(0)
    standby = serve_standby_health(health_port)
    try:
        elector.acquire(threading.Event())
    finally:
        standby.shutdown()
        standby.server_close()
    metrics.leader.set(1)

    def lost():
        metrics.leader.set(0)
        logging.shutdown()  # flush the log line that says why
        os._exit(1)

    elector.keep_leading(renewing, on_lost=lost)
    return elector


def run_operator(namespaces: list[str], all_namespaces: bool, metrics_port: int, health_port: int,
                 log_format: str = "json", election=None) -> int:
    """Run kopf until stopped; with ``election`` (leader.ElectionSettings) only while holding its Lease."""
    import kopf

    from .handlers import Controller, register
    from .cache import ObjectCache
    from tuneguard.kube import Kube, load_client
    from .metrics import Metrics
    from .reconcile import Reconciler

    setup_logging(log_format, os.environ.get("TUNEGUARD_LOG_LEVEL", "INFO"))
    log = logging.getLogger("tuneguard.operator")
    if not namespaces and not all_namespaces:
        log.error("give --namespace NAME (repeatable) or --all-namespaces")
        return 2
    workers = int(os.environ.get("TUNEGUARD_OPERATOR_WORKERS", "8"))
    metrics = Metrics()
    metrics.serve(metrics_port)
    kube = Kube(load_client(connections=workers + 2))
    cache = ObjectCache() if os.environ.get("TUNEGUARD_OPERATOR_WATCH_CACHE", "1") != "0" else None
    controller = Controller(Reconciler(kube, metrics, cache=cache), metrics, workers=workers)
    registry = kopf.OperatorRegistry()
    register(registry, controller, cluster_wide=bool(all_namespaces))
    log.info("tuneguard operator starting", extra={
        "namespaces": ",".join(namespaces) if namespaces else "*", "metrics_port": metrics_port,
        "health_port": health_port, "workers": workers,
        "leader_election": f"{election.namespace}/{election.name}" if election else "off"})
    stop_renewing = threading.Event()
    elector = lead(kube, election, metrics, health_port, stop_renewing) if election else None
    try:
        kopf.run(
            registry=registry,
            clusterwide=bool(all_namespaces),
            namespaces=[] if all_namespaces else list(namespaces),
            standalone=True,  # no kopf peering: the Lease decides who runs
            liveness_endpoint=f"http://0.0.0.0:{health_port}/healthz",
        )
    finally:
        if elector is not None:
            stop_renewing.set()  # before the release: a renewal after it would take the Lease back
            elector.release()
    return 0
