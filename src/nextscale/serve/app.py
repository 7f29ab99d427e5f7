"""The HTTP side of the web app: the page's static files and a small JSON API, on the standard library.

    GET  /                    the page (static/index.html, app.js, style.css)
    GET  /api/info            the model, its classes, default settings and the server's limits
    GET  /api/test-images     a few Fashion-MNIST test images, as the model sees them
    POST /api/image           an image file (raw bytes) -> the image at the model's resolution
    POST /api/generate        JSON settings -> the new job's status, with its "id"   (202; 400 with {"error"})
    POST /api/edit            JSON image, box, mode, settings -> the new job's status
    GET  /api/jobs/ID?from=N  status, queue position, the scales from N on, and the result

Requests are handled in threads; the model runs only in the JobQueue's single worker thread.
Every request must name this server in its Host header (a loopback name, or the --host it listens on),
and a POST that a browser sends must come from the app's own page (Origin): a web page elsewhere cannot
queue jobs here, nor read answers through DNS rebinding. Bodies are read with a timeout; at most
UPLOAD_SLOTS large bodies are held at once and one image is decoded at a time (ModelRunner.decoded).
Server.request_stop, safe in a signal handler, starts a graceful stop (Server.stop_gracefully).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from nextscale.serve.inputs import RequestError, parse_json
from nextscale.serve.jobs import JobQueue, QueueFull
from nextscale.serve.work import ModelRunner

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
MAX_JSON_BYTES = 64_000  # a generate request; an edit request adds its image
UPLOAD_HINT = " (the server's --max-upload-mb)"
DRAIN_LIMIT = 256_000_000  # a larger refused body is not read: the connection is closed instead
READ_TIMEOUT = 20.0  # seconds a client may stay silent within a request (or between two): then it is dropped
MIN_UPLOAD_RATE = 100_000  # bytes/s: a body that trickles in slower is dropped, so that it cannot hold a slot
UPLOAD_SLOTS = 2  # bodies over MAX_JSON_BYTES held at once (up to ~50 MB each: an edit's JSON, its text, the image)
UPLOAD_WAIT = 30.0  # seconds a large body waits for a slot before it is refused (503)
STOP_GRACE = 2.0  # seconds a stopping server keeps answering, for clients to read how their jobs ended
STOP_WAIT = 60.0  # seconds a stopping server waits for the running scale to finish
LOOPBACK_NAMES = ("localhost",)  # and every loopback address: 127.0.0.1, [::1], ...


def backlog_for(max_queue: int) -> int:
    """The listen backlog: room for a burst of submissions up to the queue (the surplus is answered 503, not
    reset by the kernel) and for their clients' polling; the standard library's 5 is not."""
    return 64 + 8 * max_queue


class App:
    """What the handlers share: the model runner, the job queue, the static files."""

    def __init__(self, runner: ModelRunner, jobs: JobQueue, quiet: bool = False):
        self.runner = runner
        self.jobs = jobs
        self.quiet = quiet
        folder = resources.files("nextscale") / "serve" / "static"
        self.static = {path: ((folder / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}
        self._test_images: list[dict] | None = None
        self.upload_slots = threading.BoundedSemaphore(UPLOAD_SLOTS)

    def test_images(self) -> list[dict]:
        if self._test_images is None:
            import io

            from PIL import Image

            from nextscale.serve.example_images import load_test_images
            images, labels, indices = load_test_images()
            names = self.runner.class_names
            entries = []
            for im, label, index in zip(images, labels, indices):
                buffer = io.BytesIO()
                Image.fromarray(im).save(buffer, format="PNG")
                entry = self.runner.prepare_image(buffer.getvalue())
                entry.update(label=label, index=index,
                             name=f"{names[label] if label < len(names) else label} (test image {index})")
                entries.append(entry)
            self._test_images = entries
        return self._test_images


class Handler(BaseHTTPRequestHandler):
    server_version = "nextscale"
    protocol_version = "HTTP/1.1"

    @property
    def app(self) -> App:
        return self.server.app

    @property
    def timeout(self) -> float:  # StreamRequestHandler sets it on the socket: a silent client is dropped
        return self.server.read_timeout

    # ---- responses ----
    def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, obj) -> None:
        self.send_bytes(status, json.dumps(obj).encode(), "application/json")

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(status, {"error": message})

    def log_request(self, code="-", size="-") -> None:
        # Polling would flood the console: log what changes something, and what fails.
        if not self.app.quiet and (self.command == "POST" or (isinstance(code, int) and code >= 400)):
            super().log_request(code, size)

    def log_message(self, format, *args) -> None:
        if not self.app.quiet:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    # ---- who may ask ----
    def refusal(self) -> tuple[int, str] | None:
        """(status, message) when this request is not answered: the server is stopping, the Host header names
        another server (DNS rebinding), or a POST comes from another site's page (its Origin)."""
        if self.server.refusing:
            return 503, "the server is stopping: try again once it is back"
        host = self.headers.get("Host")
        if not host:
            return 400, "the request has no Host header"
        if not self.server.host_allowed(host):
            return 403, (f"refused: this server answers requests addressed to {self.server.host_names_text()}, "
                         f"not to {host[:100]!r} (start it with --host NAME to be reached by another name)")
        origin = self.headers.get("Origin")
        if self.command == "POST" and origin is not None and not same_origin(origin, host):
            return 403, (f"refused: a page from {origin[:100]!r} may not send requests to this server; open the "
                         f"app at http://{host}/ instead")
        return None

    # ---- requests ----
    def body_length(self, limit: int, hint: str = "") -> int:
        """The body's Content-Length; refused (the body read away or the connection closed) over `limit`."""
        length = self.headers.get("Content-Length")
        if length is None or not length.isascii() or not length.isdigit() or len(length) > 15:
            self.close_connection = True  # whatever body follows cannot be told from the next request
            raise RequestError("the request has no Content-Length", status=HTTPStatus.LENGTH_REQUIRED)
        length = int(length)
        if length > limit:
            self.discard_body(length)
            raise RequestError(f"the request is {length / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB{hint}",
                               status=413)
        return length

    def discard_body(self, length: int) -> None:
        """Read a refused body away, so that the client gets to see the answer (unless it is huge)."""
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)

    def read_exactly(self, length: int) -> bytearray:
        """The body, read in chunks: each read has the socket's timeout, the whole a deadline by its size."""
        body = bytearray(length)
        view, done = memoryview(body), 0
        deadline = time.monotonic() + self.server.read_timeout + length / MIN_UPLOAD_RATE
        try:
            while done < length:
                n = self.rfile.readinto1(view[done:done + (1 << 20)])  # one read's worth: a trickle meets the deadline
                if not n:
                    raise ConnectionError("the client closed the connection within its request")
                done += n
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            self.close_connection = True
            raise RequestError(f"the request body arrived too slowly (no data for {self.server.read_timeout:g} s, "
                               f"or under {MIN_UPLOAD_RATE // 1000} kB/s): the connection is closed",
                               status=HTTPStatus.REQUEST_TIMEOUT) from None
        return body

    @contextmanager
    def upload_slot(self, length: int):
        """Hold one of the few slots for a large body while it is read and decoded; 503 when none frees up."""
        if length <= MAX_JSON_BYTES:
            yield
            return
        if not self.app.upload_slots.acquire(timeout=UPLOAD_WAIT):
            self.discard_body(length)
            raise RequestError(f"the server is busy reading other uploads (for over {UPLOAD_WAIT:g} s): try again "
                               f"in a moment", status=503)
        try:
            yield
        finally:
            self.app.upload_slots.release()

    def do_GET(self) -> None:
        self.answer(self.get)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self.answer(self.post)

    def answer(self, method) -> None:
        with self.server.busy():
            try:
                refused = self.refusal()
                if refused is not None:
                    self.close_connection = True  # a POST's body is not read
                    self.send_error_json(*refused)
                else:
                    method()
            except RequestError as e:
                self.send_error_json(e.status, str(e))
            except QueueFull as e:
                self.send_error_json(503, str(e))
            except (ConnectionError, TimeoutError):  # the client left, or stopped reading: nobody to answer
                self.close_connection = True
            except Exception as e:  # a bug: the client gets a message, the console the traceback; the server stays up
                self.internal_error(e)

    def get(self) -> None:
        url = urlsplit(self.path)
        if url.path in self.app.static:
            self.send_bytes(200, *self.app.static[url.path])
        elif url.path == "/favicon.ico":  # browsers ask for it; there is none
            self.send_bytes(204, b"", "image/x-icon")
        elif url.path == "/api/info":
            self.send_json(200, {**self.app.runner.info(), "time_limit": self.app.jobs.time_limit,
                                 "max_queue": self.app.jobs.max_waiting})
        elif url.path == "/api/test-images":
            self.send_json(200, {"images": self.app.test_images()})
        elif url.path.startswith("/api/jobs/"):
            query = parse_qs(url.query)
            start = query.get("from", ["0"])[0]
            start = int(start) if start.isascii() and start.isdigit() and len(start) < 6 else 0
            status = self.app.jobs.status(url.path[len("/api/jobs/"):], start)
            if status is None:
                self.send_error_json(404, "no such job (finished jobs are forgotten after a while)")
            else:
                self.send_json(200, status)
        else:
            self.send_error_json(404, f"nothing at {url.path[:100]}")

    def post(self) -> None:
        path = urlsplit(self.path).path
        runner = self.app.runner
        if path == "/api/image":
            length = self.body_length(runner.max_upload_bytes, UPLOAD_HINT)
            with self.upload_slot(length):
                self.send_json(200, runner.prepare_image(self.read_exactly(length)))
        elif path in ("/api/generate", "/api/edit"):
            edit = path == "/api/edit"
            length = self.body_length(MAX_JSON_BYTES + (runner.max_upload_bytes * 4 // 3 if edit else 0),
                                      UPLOAD_HINT if edit else "")
            with self.upload_slot(length):
                body = parse_json(self.read_exactly(length))
                work, num_scales = (runner.edit if edit else runner.generate)(body)
            job = self.app.jobs.submit("edit" if edit else "generate", work, num_scales)
            self.send_json(202, self.app.jobs.status(job.id))
        else:
            self.discard_body(self.body_length(MAX_JSON_BYTES))
            self.send_error_json(404, f"nothing to POST to at {path[:100]}")

    def internal_error(self, e: Exception) -> None:
        traceback.print_exc(file=sys.stderr)
        self.close_connection = True
        self.send_error_json(500, f"internal error: {type(e).__name__}: {e}")


def host_name(host_header: str) -> str:
    """The name in a Host header, without the port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    if host_header.startswith("["):
        return host_header[1:host_header.find("]")].lower()
    return host_header.rsplit(":", 1)[0].lower().rstrip(".")


def ip_address(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback_address(name: str) -> bool:
    address = ip_address(name)
    return address is not None and address.is_loopback


def same_origin(origin: str, host_header: str) -> bool:
    """Whether a browser's Origin header is the page this server serves at `host_header` (http, or https
    behind a proxy). 'null' (a sandboxed or local-file page) is not."""
    url = urlsplit(origin)
    return url.scheme in ("http", "https") and url.netloc.lower() == host_header.lower()


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stop does not wait for idle connections; it waits for requests being answered

    def __init__(self, address: tuple[str, int], app: App, backlog: int, read_timeout: float, host_names=()):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.request_queue_size = backlog  # read by listen() in the constructor
        self.app = app
        self.read_timeout = read_timeout
        # Names a client may address: loopback ones and the address listened on. On a wildcard address (0.0.0.0)
        # the machine's names too, and any IP address: DNS rebinding needs a name, an address cannot be rebound.
        wildcard = address[0] in ("", "0.0.0.0", "::")
        self.host_names = {*LOOPBACK_NAMES, *(n.lower() for n in host_names if n)}
        if not wildcard:
            self.host_names.add(address[0].lower())
        else:
            self.host_names.update(n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n)
        self.any_address = wildcard
        self.refusing = False  # set at the end of a stop: every request is answered 503
        self.stop_requested = False
        self.stopper: threading.Thread | None = None
        self._busy = 0
        self._busy_cond = threading.Condition()
        super().__init__(address, Handler)

    def host_allowed(self, host_header: str) -> bool:
        name = host_name(host_header)
        return (name in self.host_names or is_loopback_address(name)
                or (self.any_address and ip_address(name) is not None))

    def host_names_text(self) -> str:
        names = sorted(n for n in self.host_names if n != "localhost" and not is_loopback_address(n))
        return " or ".join(["localhost", "a loopback address (127.0.0.1, [::1])"] + names
                           + (["an IP address of this machine"] if self.any_address else []))

    @contextmanager
    def busy(self):
        """Counts the requests being answered: a stop waits for them (no native code may run at exit)."""
        with self._busy_cond:
            self._busy += 1
        try:
            yield
        finally:
            with self._busy_cond:
                self._busy -= 1
                self._busy_cond.notify_all()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a closed tab is not worth a traceback
            super().handle_error(request, client_address)

    # ---- stopping ----
    def request_stop(self) -> None:
        """Ask serve_forever to stop gracefully. Safe in a signal handler: it only sets a flag (taking a lock
        there could deadlock with the code it interrupted); service_actions acts on it."""
        self.stop_requested = True

    def service_actions(self) -> None:  # serve_forever calls it between polls, on its own thread
        if self.stop_requested and self.stopper is None:
            self.stopper = threading.Thread(target=self.stop_gracefully, name="nextscale-stop", daemon=True)
            self.stopper.start()

    def stop_gracefully(self, grace: float = STOP_GRACE, wait: float = STOP_WAIT) -> bool:
        """Take no new job, answer the waiting ones, end the running one at its next scale; keep answering
        for up to `grace` seconds so that clients read how their jobs ended; then end serve_forever.
        -> whether the worker stopped within `wait` seconds."""
        jobs = self.app.jobs
        jobs.stop()
        stopped = jobs.join(wait)
        deadline = time.monotonic() + grace
        while jobs.unread and time.monotonic() < deadline:
            time.sleep(0.02)
        self.refusing = True
        self.shutdown()
        return stopped

    def close(self, wait: float = 3.0) -> None:
        """After serve_forever: close the socket, stop the worker, and wait up to `wait` s for the requests
        being answered."""
        self.server_close()
        self.refusing = True
        self.app.jobs.stop()
        deadline = time.monotonic() + wait
        with self._busy_cond:
            while self._busy and time.monotonic() < deadline:
                self._busy_cond.wait(max(0.0, deadline - time.monotonic()))


def make_server(runner: ModelRunner, host: str = "127.0.0.1", port: int = 8000, time_limit: float = 120.0,
                max_queue: int = 8, start_worker: bool = True, quiet: bool = False,
                read_timeout: float = READ_TIMEOUT, host_names=()) -> Server:
    """The HTTP server (not yet serving: call serve_forever). port 0 picks a free port (server.server_port).
    `host_names`: names besides the loopback ones and `host` that clients may address it by (Host header)."""
    jobs = JobQueue(time_limit=time_limit, max_waiting=max_queue)
    server = Server((host, port), App(runner, jobs, quiet=quiet), backlog_for(max_queue), read_timeout, host_names)
    if start_worker:
        jobs.start()
    return server
