"""`nextscale serve`: a local web app to generate and edit images, showing every scale as it is generated."""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

from nextscale.commands.common import (UserError, add_device_args, add_model_args, autocast_context, load_model,
                                       resolve_device)


def add_parser(sub) -> None:
    from nextscale.images import DEFAULT_MAX_PIXELS
    p = sub.add_parser(
        "serve", help="start a local web app to generate and edit images",
        description="Start a web app on this machine: generate images (class, seed, cfg, top-k, top-p, number) and "
                    "watch each scale appear coarse to fine; edit an image (upload one or pick a Fashion-MNIST test "
                    "image, drag a rectangle, in-paint / out-paint / class edit) and download the result. One "
                    "generation runs at a time; further requests wait in a queue. Open the printed address in a "
                    "browser; stop with Ctrl-C.")
    add_model_args(p)
    add_device_args(p)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on; the default answers this machine only. Anything else (0.0.0.0 "
                          "for all interfaces) lets others on the network use the app and your CPU/GPU: there is "
                          "no login (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=8000, help="TCP port, 0 picks a free one (default 8000)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds one request may run (waiting in the queue not counted); checked between "
                             "scales, so the scale under way finishes first (default 120)")
    limits.add_argument("--max-queue", type=int, default=8,
                        help="requests that may wait behind the running one; more are refused, HTTP 503 "
                             "(default 8)")
    limits.add_argument("--max-images", type=int, default=16,
                        help="most images (or edit variations) per request (default 16)")
    limits.add_argument("--max-upload-mb", type=float, default=10.0,
                        help="largest image file accepted, in MB (default 10)")
    limits.add_argument("--max-pixels", type=float, default=DEFAULT_MAX_PIXELS / 1e6,
                        help="largest image accepted, in megapixels (width x height / 1e6); guards against small "
                             f"files that decode to huge images (default {DEFAULT_MAX_PIXELS / 1e6:g})")
    p.add_argument("--quiet", action="store_true", help="do not log requests to the console")
    p.set_defaults(run=run, threads_per_call=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    """Serve until Ctrl-C or SIGTERM; then the process exits (os._exit), 0 after a clean stop."""
    from nextscale.serve import ModelRunner, make_server

    for name in ("time_limit", "max_upload_mb", "max_pixels"):
        if not getattr(args, name) > 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    for name in ("max_queue", "max_images"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    device = resolve_device(args.device)
    autocast_context(device, args.precision)  # refuses float16 on a CPU now rather than in every request
    var = load_model(args).to(device).eval()
    name = args.transformer or args.model or "fashion-mnist"
    runner = ModelRunner(var, name, device, args.precision, max_images=args.max_images,
                         max_upload_bytes=int(args.max_upload_mb * 1e6), max_pixels=int(args.max_pixels * 1e6))
    try:
        server = make_server(runner, args.host, args.port, time_limit=args.time_limit, max_queue=args.max_queue,
                             quiet=args.quiet)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e} "
                        f"(another program may use the port: choose one with --port)") from None
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}, not only on this machine: anyone who can reach it can use the "
              f"app (there is no login). Use --host 127.0.0.1 to keep it local.", file=sys.stderr)
    # Ctrl-C, and SIGTERM from a service manager (systemd, docker stop): the running job ends at its next scale,
    # waiting ones are told, then the process exits 0. A second signal quits at once.
    signals = 0

    def on_signal(signum, frame) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            os.write(1, b"stopping: the running job ends after its current scale (Ctrl-C again quits at once)\n")
            server.request_stop()  # only sets a flag: a handler must not take locks the main thread may hold
        else:
            os.write(2, b"quitting at once: the running job is abandoned\n")
            os._exit(1)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"nextscale serve: {name} on {device}; open http://{host}:{server.server_port}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)  # the poll interval is how soon a stop request is seen
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stopped = server.app.jobs.join(0)
    if not stopped:
        print("the running job did not reach the end of its scale in time: quitting without it", file=sys.stderr)
    print("stopped", flush=True)
    sys.stderr.flush()
    # Leave without the interpreter's teardown: it races the threads that ran torch, whose thread-local destructors
    # need the GIL the teardown holds, and the process aborts ("terminate called without an active exception",
    # exit -6); it also spends a second collecting garbage. Everything is closed and flushed by now.
    os._exit(0 if stopped else 1)
