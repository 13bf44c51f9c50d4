"""What a running service shows its operator: Prometheus metrics and health checks over HTTP,
and log lines as JSON on request.

``/metrics`` is Prometheus's text format from :mod:`prometheus_client`; ``/healthz`` answers
200 while the service's own threads are alive (a supervisor restarts it otherwise) and
``/readyz`` 200 while it can do its work (its broker, its store), 503 with the reason when
not. prometheus_client's own server answers every path with the metrics, so the two checks
need a handler of their own; both fit in the standard library's HTTP server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from hybreid.errors import UserError

if TYPE_CHECKING:  # the metrics' library is the services' dependency, not every command's
    from prometheus_client import CollectorRegistry

Check = Callable[[], str | None]  # None: fine; otherwise what is wrong, in one sentence
Page = tuple[int, bytes, str]  # status, body, content type


class MetricsServer:
    """Serves ``registry`` and the two checks on ``host:port`` from a daemon thread; ``pages``
    answers any other path it knows (the edge's preview), None for one it does not."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, alive: Check, ready: Check,
                 pages: Callable[[str], Page | None] | None = None):
        handler = type("Handler", (_Handler,), {"registry": registry, "alive": staticmethod(alive),
                                                "ready": staticmethod(ready),
                                                "pages": staticmethod(pages or (lambda path: None))})
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise UserError(f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); choose another "
                            "--metrics-port") from None
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        logging.getLogger("hybreid").info("metrics and health checks on http://%s:%d/metrics", self.host, self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    alive: Check
    ready: Check
    pages: Callable[[str], Page | None]

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path in ("/healthz", "/readyz"):
            problem = (self.alive if path == "/healthz" else self.ready)()
            body = json.dumps({"status": "ok"} if problem is None else {"status": "failing", "reason": problem})
            self._send(200 if problem is None else 503, body.encode(), "application/json")
        else:
            self._send(*(self.pages(path) or (404, b'{"status": "not found"}', "application/json")))

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002
        """A scrape every few seconds is not news: the access log stays quiet."""


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line (time, level, logger, message, and the exception if any), for a
    log collector that parses fields rather than text."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
