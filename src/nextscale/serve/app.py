"""The HTTP side of the web app: the page's static files and a small JSON API, on the standard library.

    GET  /                    the page (static/index.html, app.js, style.css)
    GET  /api/info            the model, its classes, default settings and the server's limits
    GET  /api/test-images     a few Fashion-MNIST test images, as the model sees them
    POST /api/image           an image file (raw bytes) -> the image at the model's resolution
    POST /api/generate        JSON settings -> the new job's status, with its "id"   (202; 400 with {"error"})
    POST /api/edit            JSON image, box, mode, settings -> the new job's status
    GET  /api/jobs/ID?from=N  status, queue position, the scales from N on, and the result

Requests are handled in threads; the model runs only in the JobQueue's single worker thread.
"""

from __future__ import annotations

import json
import sys
import traceback
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


class App:
    """What the handlers share: the model runner, the job queue, the static files."""

    def __init__(self, runner: ModelRunner, jobs: JobQueue, quiet: bool = False):
        self.runner = runner
        self.jobs = jobs
        self.quiet = quiet
        folder = resources.files("nextscale") / "serve" / "static"
        self.static = {path: ((folder / name).read_bytes(), ctype) for path, (name, ctype) in STATIC.items()}
        self._test_images: list[dict] | None = None

    def test_images(self) -> list[dict]:
        if self._test_images is None:
            import io

            from PIL import Image

            from nextscale.serve.test_images import load_test_images
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

    # ---- responses ----
    def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
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

    # ---- requests ----
    def read_body(self, limit: int, hint: str = "") -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True  # whatever body follows cannot be told from the next request
            raise RequestError("the request has no Content-Length", status=HTTPStatus.LENGTH_REQUIRED)
        length = int(length)
        if length > limit:
            if length <= DRAIN_LIMIT:  # read it away, so that the client gets to see the answer
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 20))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            else:
                self.close_connection = True
            raise RequestError(f"the request is {length / 1e6:.1f} MB; the limit is {limit / 1e6:g} MB{hint}",
                               status=413)
        return self.rfile.read(length)

    def read_json(self, limit: int, hint: str = "") -> dict:
        return parse_json(self.read_body(limit, hint))

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        try:
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
                status = self.app.jobs.status(url.path[len("/api/jobs/"):], int(start) if start.isdigit() else 0)
                if status is None:
                    self.send_error_json(404, "no such job (finished jobs are forgotten after a while)")
                else:
                    self.send_json(200, status)
            else:
                self.send_error_json(404, f"nothing at {url.path}")
        except RequestError as e:
            self.send_error_json(e.status, str(e))
        except Exception as e:  # a bug: the client gets a message, the console the traceback; the server stays up
            self.internal_error(e)

    do_HEAD = do_GET

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        runner = self.app.runner
        try:
            if path == "/api/image":
                self.send_json(200, runner.prepare_image(self.read_body(runner.max_upload_bytes, UPLOAD_HINT)))
            elif path in ("/api/generate", "/api/edit"):
                limit = MAX_JSON_BYTES + (runner.max_upload_bytes * 4 // 3 if path == "/api/edit" else 0)
                body = self.read_json(limit, UPLOAD_HINT if path == "/api/edit" else "")
                kind = path.rsplit("/", 1)[1]
                work, num_scales = (runner.generate if kind == "generate" else runner.edit)(body)
                job = self.app.jobs.submit(kind, work, num_scales)
                self.send_json(202, self.app.jobs.status(job.id))
            else:
                self.read_body(MAX_JSON_BYTES)
                self.send_error_json(404, f"nothing to POST to at {path}")
        except RequestError as e:
            self.send_error_json(e.status, str(e))
        except QueueFull as e:
            self.send_error_json(503, f"the server is busy: {e}")
        except Exception as e:
            self.internal_error(e)

    def internal_error(self, e: Exception) -> None:
        traceback.print_exc(file=sys.stderr)
        self.close_connection = True
        self.send_error_json(500, f"internal error: {type(e).__name__}: {e}")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a closed tab is not worth a traceback
            super().handle_error(request, client_address)


def make_server(runner: ModelRunner, host: str = "127.0.0.1", port: int = 8000, time_limit: float = 120.0,
                max_queue: int = 8, start_worker: bool = True, quiet: bool = False) -> ThreadingHTTPServer:
    """The HTTP server (not yet serving: call serve_forever). port 0 picks a free port (server.server_port)."""
    jobs = JobQueue(time_limit=time_limit, max_waiting=max_queue)
    server = Server((host, port), Handler)
    server.app = App(runner, jobs, quiet=quiet)
    if start_worker:
        jobs.start()
    return server
