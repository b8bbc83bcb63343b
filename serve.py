#!/usr/bin/env python3
"""Draw digits in the browser and see the model train.py saved read them.

    python serve.py                        # http://127.0.0.1:8000/, this computer only
    python serve.py --host 0.0.0.0         # a classroom: other computers may open it too
    python serve.py --help                 # every option

Serves draw.html (beside this script) and one API, POST /predict, which reads a picture
exactly as predict.py does and answers in JSON: the digit, its calibrated confidence, the ten
probabilities, the 28x28 input the model saw and the notes.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from predict import (PACKAGES, ModelError, PictureError, Recognizer, answer, onnx_model_path, picture_from,
                     read_digit)
from train import (EXIT_ERROR, IMAGE_SHAPE, METRICS_FILE, ONNX_FILE, OneLineParser, has_packages, run_as_program,
                   stop_as_ctrl_c, warn, whole_number)

# -----------------------------------------------------------------------------
# Settings: a user may change the first three on the command line
# -----------------------------------------------------------------------------
SERVE_HOST = "127.0.0.1"  # this computer only
SERVE_PORT = 8000
SERVE_MAX_BYTES = 20 * 2**20  # largest picture POST /predict takes: a phone photo fits
SERVE_MAX_PIXELS = 12_000_000  # largest picture it decodes (a JPEG counts at the reduced size it is decoded at)
SERVE_BODY_BYTES = 48 * 2**20  # pictures each process holds at once: two of the largest, and drawings beside them
SERVE_READERS = 2  # pictures decoded at once, at most, by each serving process
SERVE_CONNECTIONS = 200  # connections each process serves at once; more wait to be accepted
SERVE_IDLE_SECONDS = 10  # a connection with no request for this long is closed
SERVE_DEADLINE_SECONDS = 30  # a whole request, from its first byte: a 20 MiB photo at 1 MB/s arrives in time
SERVE_LINGER_SECONDS = 1  # after an early answer, what the client still sends is read until it is silent this long
USABLE_CORES = (os.process_cpu_count() if hasattr(os, "process_cpu_count")  # 3.13+: affinity and quotas
                else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1
SERVE_PROCESSES = min(USABLE_CORES, 4)  # processes answering requests, each with its own model ...
MAX_SERVE_PROCESSES = 32  # ... and the most --processes takes
SERVE_BACKLOG = 128  # connections waiting to be accepted: a classroom connecting at once is queued
PAGE_FILE = "draw.html"  # the drawing page, beside this script

# -----------------------------------------------------------------------------
# The page and one API, on the same model as predict.py
# -----------------------------------------------------------------------------
class ServeError(Exception):
    """The server could not start; the message says why and what to do."""


def page_with_policy(model_path: Path) -> tuple[bytes, str]:
    """draw.html, with the model named in it, and a Content-Security-Policy that allows only its
    own inline script and style (by their hashes) and requests to this server."""
    import base64
    import hashlib
    import html

    path = Path(__file__).with_name(PAGE_FILE)
    try:
        page = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ServeError(f"{path}: cannot read the drawing page ({error.strerror})") from None
    metrics = model_path.with_name(METRICS_FILE)
    about = model_path.name
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        about += f" ({100 * json.loads(metrics.read_text())['test_accuracy']:.2f}% right on MNIST's test set)"
    page = page.replace("<!--model-->", html.escape(about))
    hashes = {kind: " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
                             for block in re.findall(rf"<{kind}>(.*?)</{kind}>", page, re.S))
              for kind in ("script", "style")}
    policy = (f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; "
              "img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
              "frame-ancestors 'none'")
    return page.encode(), policy


def read_posted_picture(recognizer: Recognizer, body: bytes, kind: str, readers: threading.BoundedSemaphore) -> dict:
    """What POST /predict answers: predict.py's answer for the same picture, and the 28x28 input the
    model saw. `kind` is the request's Content-Type: a form upload (multipart/form-data) holds the picture."""
    if kind.lower().startswith("multipart/form-data"):
        body = uploaded_file(body, kind)
    if not body:
        raise PictureError("file is empty")  # as predict.py says it
    with readers:  # a few pictures at a time, each of a bounded size: a burst of huge photos cannot exhaust memory
        reading = read_digit(*picture_from(io.BytesIO(body), SERVE_MAX_PIXELS))
    row = recognizer.probabilities(reading.image)
    return {**answer(row, reading.notes), "input": np.round(reading.image.astype(np.float64), 3).tolist()}


def uploaded_file(body: bytes, kind: str) -> bytes:
    """The one file of a form upload (`curl -F file=@seven.png`), from the multipart body."""
    import email.message
    import email.parser

    header = email.message.Message()
    header["Content-Type"] = kind
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        raise PictureError("a form upload without its boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    files = []
    start = 0 if body.startswith(delimiter[2:]) else body.find(delimiter)  # where "--boundary" starts
    start += 2 if start > 0 else 0
    while start >= 0:
        head_start = body.find(b"\r\n", start + len(delimiter) - 2) + 2
        head_end = body.find(b"\r\n\r\n", head_start)
        end = body.find(delimiter, head_end)
        if head_start < 2 or head_end < 0 or end < 0:
            break
        part = email.parser.BytesHeaderParser().parsebytes(body[head_start:head_end + 4])
        if part.get_param("filename", header="Content-Disposition") is not None:
            files.append((head_end + 4, end))
        start = end + 2
    if len(files) != 1:
        raise PictureError(f"a form upload must hold one file; this one holds {len(files)}")
    return body[files[0][0]:files[0][1]]


class Refused(Exception):
    """A request answered with an error before its body is read: the HTTP status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def body_length(headers) -> int:
    """The length of the picture a request declares, checked before anything is read."""
    values = headers.get_all("Content-Length") or []
    if not values or headers.get("Transfer-Encoding"):
        raise Refused(411, "send the picture with a Content-Length")
    text = values[0].strip()
    if len(set(values)) > 1:
        raise Refused(400, "two different Content-Lengths")
    if re.fullmatch(r"-[0-9]+", text):
        raise Refused(400, f"Content-Length is negative ({text[:20]})")
    if not re.fullmatch(r"[0-9]+", text):
        raise Refused(400, f"Content-Length must be a number of bytes, not {text[:20]!r}")
    if len(text) > 20:
        raise Refused(413, f"picture too large: a Content-Length of {len(text):,} digits; "
                           f"at most {SERVE_MAX_BYTES // 2**20} MiB")
    if int(text) > SERVE_MAX_BYTES:
        raise Refused(413, f"picture too large: {int(text):,} bytes; at most {SERVE_MAX_BYTES // 2**20} MiB")
    return int(text)


def unread_length(headers) -> int | None:
    """How much body a request still has to send, if that can be told (for draining it)."""
    if headers is None:
        return None
    text = (headers.get("Content-Length") or "").strip()
    if re.fullmatch(r"[0-9]{1,20}", text):
        return int(text)
    return None if text or headers.get("Transfer-Encoding") else 0


class ByteBudget:
    """The bytes of pictures a process holds at once: a request waits until its picture fits."""

    def __init__(self, total: int) -> None:
        self.free = total
        self.changed = threading.Condition()

    @contextlib.contextmanager
    def held(self, count: int, deadline: float) -> Iterator[bool]:
        """True once `count` bytes are set aside for the request; False if they were not free by `deadline`."""
        with self.changed:
            fits = self.changed.wait_for(lambda: self.free >= count, timeout=deadline - time.monotonic())
            if fits:
                self.free -= count
        try:
            yield fits
        finally:
            if fits:
                with self.changed:
                    self.free += count
                    self.changed.notify_all()


def served_names(host: str) -> frozenset[str]:
    """The host names the server answers to (besides addresses): a page under any other name is
    refused, so that a page elsewhere cannot reach it by renaming itself (DNS rebinding)."""
    import socket

    names = {"localhost", host.lower().strip("[]")}  # as given to --host: an address or a name
    if is_wildcard(host):
        with contextlib.suppress(OSError):
            names |= {socket.gethostname().lower(), f"{socket.gethostname().lower()}.local",
                      socket.getfqdn().lower()}
    return frozenset(names)


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def foreign_request(headers, names: frozenset[str], local_address: str) -> str | None:
    """Why a request comes from a page elsewhere, if it does: a Host the server is not known by,
    or another page's Origin."""
    import ipaddress

    host = headers.get("Host")
    if host is not None:
        name = host.lower()
        name = name[1:name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0] if name.count(":") == 1 else name
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            known = name in names
        else:
            here = ipaddress.ip_address(local_address.split("%")[0])
            here = getattr(here, "ipv4_mapped", None) or here
            known = address == here or address.is_loopback and here.is_loopback
        if not known:
            return f"this server is not known as {host!r}: open it at the address it printed"
    origin = headers.get("Origin")
    if origin is not None and (host is None or origin.lower() != f"http://{host.lower()}"):
        return f"requests from other pages ({origin[:100]}) are refused"
    return None


def make_handler(recognizer: Recognizer, page: bytes, policy: str, quiet: bool, names: frozenset[str],
                 deadline: float = SERVE_DEADLINE_SECONDS, body_bytes: int = SERVE_BODY_BYTES):
    """The request handler class: every request has `deadline` seconds from its first byte to its
    answer, and the pictures held at once take at most `body_bytes`."""
    import http.server
    import socket
    from http import HTTPStatus
    from urllib.parse import urlsplit

    readers = threading.BoundedSemaphore(SERVE_READERS)
    budget = ByteBudget(body_bytes)

    class DeadlineReader(socket.SocketIO):
        """A connection's reads, each allowed only the time left before `until` (a monotonic time):
        a client trickling a byte at a time is cut off all the same."""
        until = 0.0

        def readinto(self, buffer) -> int | None:
            left = self.until - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request's deadline passed")
            self._sock.settimeout(left)
            return super().readinto(buffer)

    class Handler(http.server.BaseHTTPRequestHandler):
        """GET / is the page, POST /predict the API; anything else an error in JSON. Nothing on disk is served."""
        protocol_version = "HTTP/1.1"  # keep-alive: a drawing sends many requests
        disable_nagle_algorithm = True  # an answer's head and body go out at once, not 40 ms apart
        server_version = "serve.py"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by one that keeps the request's deadline
            self.reader = DeadlineReader(self.connection, "rb")
            self.rfile = io.BufferedReader(self.reader)

        def handle_one_request(self) -> None:
            """Wait up to SERVE_IDLE_SECONDS for a request; from its first byte, it has `deadline` seconds."""
            self.reader.until = time.monotonic() + SERVE_IDLE_SECONDS
            try:
                waiting = self.rfile.peek(1)
            except OSError:  # silent for too long, or gone
                waiting = b""
            if not waiting:
                self.close_connection = True
                return
            self.started, self.answered = time.perf_counter(), False
            self.command, self.path, self.request_version, self.headers = None, "", "HTTP/1.1", None
            self.reader.until = time.monotonic() + deadline
            super().handle_one_request()
            if self.reader._timeout_occurred and not self.answered:
                self.refuse(HTTPStatus.REQUEST_TIMEOUT, f"the request did not arrive within {deadline:g} seconds")

        def parse_request(self) -> bool:
            """http.server's parsing, and then: only requests from the page itself or from scripts."""
            if not super().parse_request():
                return False
            problem = foreign_request(self.headers, names, self.connection.getsockname()[0])
            if problem:
                self.refuse(HTTPStatus.FORBIDDEN, problem)
            return not problem

        def handle_expect_100(self) -> bool:
            return True  # "100 Continue" is said by do_POST, once the picture's length is accepted

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/predict":
                return self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, "use POST")
            if path != "/":
                return self.refuse(HTTPStatus.NOT_FOUND, "no such page")
            self.send(HTTPStatus.OK, page, "text/html; charset=utf-8", {"Content-Security-Policy": policy})

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            if path != "/predict":
                return self.refuse(HTTPStatus.METHOD_NOT_ALLOWED if path == "/" else HTTPStatus.NOT_FOUND,
                                   "post pictures to /predict")
            try:
                length = body_length(self.headers)
            except Refused as refusal:
                return self.refuse(refusal.status, str(refusal))
            with budget.held(length, self.reader.until) as fits:
                if not fits:
                    return self.refuse(HTTPStatus.SERVICE_UNAVAILABLE, "the server is busy: try again in a moment",
                                       {"Retry-After": "5"})
                if self.headers.get("Expect", "").lower() == "100-continue":
                    self.send_response_only(HTTPStatus.CONTINUE)
                    self.end_headers()
                body = self.rfile.read(length)  # past the deadline: TimeoutError, answered 408
                if len(body) < length:
                    return self.refuse(HTTPStatus.BAD_REQUEST,
                                       f"the picture ended after {len(body):,} of its {length:,} bytes")
                try:
                    answer = read_posted_picture(recognizer, body, self.headers.get("Content-Type", ""), readers)
                except PictureError as error:
                    return self.send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            self.send_json(HTTPStatus.OK, answer)

        def not_allowed(self) -> None:
            self.refuse(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported here")

        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = do_CONNECT = not_allowed

        def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
            """http.server's own errors (a malformed request, an unknown method) as JSON too."""
            self.refuse(code, message or HTTPStatus(code).phrase)

        def refuse(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
            """An error answered before the request's body is read; then the connection is closed,
            after reading what the client still sends: closing with data unread would reset the
            connection, and the reset can overtake the answer."""
            self.close_connection = True
            self.send_json(status, {"error": reason}, headers)
            unread = unread_length(self.headers)
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_WR)
                until = max(self.reader.until, time.monotonic() + SERVE_LINGER_SECONDS)
                while unread is None or unread > 0:
                    left = min(until - time.monotonic(), SERVE_LINGER_SECONDS)
                    if left <= 0:
                        break
                    self.connection.settimeout(left)
                    chunk = self.connection.recv(2**16)
                    if not chunk:
                        break
                    unread = None if unread is None else unread - len(chunk)

        def send_json(self, status: int, content: dict, headers: dict[str, str] | None = None) -> None:
            self.send(status, json.dumps(content).encode(), "application/json",
                      {"Cache-Control": "no-store", **(headers or {})})

        def send(self, status: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
            self.connection.settimeout(SERVE_IDLE_SECONDS)  # a client that reads nothing is dropped
            self.send_response_only(status)
            for name, value in {"Content-Type": kind, "Content-Length": str(len(body)),
                                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                                **headers}.items():
                self.send_header(name, value)
            if status == HTTPStatus.METHOD_NOT_ALLOWED:
                self.send_header("Allow", "POST" if urlsplit(self.path).path == "/predict" else "GET")
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            self.answered = True
            self.log_line(status)

        def log_line(self, status: int) -> None:
            if not quiet:
                path = "".join(c if c.isprintable() else "?" for c in (self.path or "")[:200])
                elapsed = 1000 * (time.perf_counter() - self.started)
                sys.stderr.write(f"{self.command or '-'} {path or '-'} {int(status)} {elapsed:.0f} ms\n")

        def log_message(self, format: str, *args) -> None:  # http.server's own log: replaced by log_line
            pass

    return Handler


def serve(args: argparse.Namespace) -> int:
    """Serve the drawing page and the API until Ctrl-C or SIGTERM; 0 when stopped that way.

    Reading a picture is Python work, and one Python process answers on one core at a time
    (the interpreter's lock), so --processes processes share the listening socket, each with
    the model loaded once: the system hands each new connection to one that is waiting.
    """
    model_path = onnx_model_path(args.model)
    page, policy = page_with_policy(model_path)
    listener = listening_socket(args.host, args.port)
    announce(listener)  # before any process answers: whoever is answered has been told where
    names = served_names(args.host)
    helpers = [start_helper(listener, model_path, page, policy, args.quiet, names)
               for _ in range(args.processes - 1)]
    stopped = False
    try:
        answering_server(listener, model_path, page, policy, args.quiet, names).serve_forever()
    except KeyboardInterrupt:
        stopped = True
    finally:
        for helper in helpers:
            helper.terminate()
        for helper in helpers:
            helper.join()
        listener.close()
    if stopped:  # said last: no helper's log line can come after it
        print("Stopped.", file=sys.stderr)
    return 0


def announce(listener) -> None:
    """Say where the page is (for a server open to the network, at addresses other computers can
    use), and warn when other computers can reach it."""
    import ipaddress

    host, port = listener.getsockname()[:2]
    shown = "localhost" if is_wildcard(host) else f"[{host}]" if ":" in host else host
    print(f"Draw digits at http://{shown}:{port}/ (Ctrl-C to stop)", flush=True)
    if is_wildcard(host):
        found = [f"http://[{address}]:{port}/" if ":" in address else f"http://{address}:{port}/"
                 for address in own_addresses()]
        print(f"From other computers: {' or '.join(found) or f'http://<this computer address>:{port}/'}", flush=True)
    with contextlib.suppress(ValueError):
        if not ipaddress.ip_address(host).is_loopback:
            warn(f"serving on {host}: anyone who can reach this computer on port {port} "
                 "can use the page and the API")


def own_addresses() -> list[str]:
    """This computer's network addresses, as far as the standard library can tell (it lists no interfaces)."""
    import ipaddress
    import socket

    found = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # a documentation address: nothing is sent, the route is only looked up
        found.append(probe.getsockname()[0])
    with contextlib.suppress(OSError):
        for *_, address in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM):
            found.append(address[0])
    return [address for address in dict.fromkeys(found) if not ipaddress.ip_address(address).is_loopback]


def listening_socket(host: str, port: int):
    """The socket every serving process accepts connections on; a port in use is said in words."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family, backlog=SERVE_BACKLOG)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} is already in use on {host}; stop what uses it, "
                             "or choose another with --port N (--port 0 takes any free port)") from None
        raise ServeError(f"cannot serve on {host} port {port}: {error.strerror or error}") from None
    listener.setblocking(False)  # a process that loses the race for a connection goes back to waiting
    return listener


def answering_server(listener, model_path: Path, page: bytes, policy: str, quiet: bool, names: frozenset[str]):
    """An HTTP server on the shared socket, with this process's own copy of the model, ready to answer."""
    recognizer = Recognizer(model_path)
    recognizer.probabilities(np.zeros(IMAGE_SHAPE, np.float32))  # the first call sets up: do it now
    return http_server(listener, make_handler(recognizer, page, policy, quiet, names))


def http_server(listener, handler, connections: int = SERVE_CONNECTIONS):
    """A server on `listener` with a thread per connection, at most `connections` at once: at the
    cap it accepts no more, and they wait for a thread here or are taken by another process."""
    import http.server

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True  # a connection left open never keeps the server from stopping
        threads = threading.BoundedSemaphore(connections)

        def get_request(self):
            if not self.threads.acquire(timeout=0.5):  # the cap: look again after a while (and after a shutdown)
                raise BlockingIOError("every connection thread is busy")
            try:
                return super().get_request()
            except BaseException:
                self.threads.release()
                raise

        def process_request_thread(self, request, client_address) -> None:
            try:
                super().process_request_thread(request, client_address)
            finally:
                self.threads.release()

        def handle_error(self, request, client_address) -> None:  # one line, never a traceback
            print(f"error: a request from {client_address[0]} failed: {sys.exc_info()[1]!r}", file=sys.stderr)

    server = Server(listener.getsockname()[:2], handler, bind_and_activate=False)
    server.socket.close()
    server.socket = listener
    return server


def start_helper(listener, model_path: Path, page: bytes, policy: str, quiet: bool, names: frozenset[str]):
    """Another serving process: a fresh interpreter (a fork would copy this one's threads' locks mid-use).

    Ctrl-C reaches every process of the terminal; stopping is the first process's to do, so the
    helper starts with it blocked and then ignores it.
    """
    import multiprocessing

    helper = multiprocessing.get_context("spawn").Process(
        target=help_serving, args=(listener, model_path, page, policy, quiet, names), daemon=True)
    blockable = hasattr(signal, "pthread_sigmask")
    if blockable:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        helper.start()
    finally:
        if blockable:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    return helper


def help_serving(listener, model_path: Path, page: bytes, policy: str, quiet: bool, names: frozenset[str]) -> None:
    """A helper's life: answer on the shared socket until the first process stops it, or is gone."""
    import multiprocessing

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    # Killed outright, the first process cannot stop its helpers: they leave as soon as it is gone.
    parent = multiprocessing.parent_process()
    threading.Thread(target=lambda: (parent.join(), os._exit(0)), daemon=True).start()
    with contextlib.suppress(ModelError):  # a bad model: the first process says so
        answering_server(listener, model_path, page, policy, quiet, names).serve_forever()


# -----------------------------------------------------------------------------
# Command line
# -----------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(
        prog="serve.py",
        allow_abbrev=False,
        description="Serve a page where you draw digits and see the model train.py saved read them.")
    parser.add_argument("--model", type=Path, default=Path(ONNX_FILE), metavar="PATH",
                        help="the model train.py saved: its model.onnx, or the model.h5 beside it "
                             "(default: %(default)s, in the current folder)")
    parser.add_argument("--host", default=SERVE_HOST, metavar="ADDR",
                        help="address to serve on; 0.0.0.0 lets other computers in (default: %(default)s)")
    parser.add_argument("--port", type=whole_number(0, 65535), default=SERVE_PORT, metavar="N",
                        help="port to serve on; 0 takes any free one (default: %(default)s)")
    parser.add_argument("--processes", type=whole_number(1, MAX_SERVE_PROCESSES), default=SERVE_PROCESSES,
                        metavar="N", help="processes answering requests, each with its own copy of the "
                                          "model (default: one per core, at most 4: %(default)s here)")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not has_packages(PACKAGES):
        return EXIT_ERROR
    stop_as_ctrl_c()
    try:
        return serve(args)
    except (ModelError, ServeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    run_as_program(main)
