"""--serve: the drawing page and POST /predict, as a browser, a script and a careless client use them."""
from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pytest
from PIL import Image, ImageDraw

import predict
import serve
from conftest import (ROOT, SERVE, helper_pids, helper_processes, predict_here, run_program, start_server,
                      stop_server)


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    answer = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return answer


def post_picture(server, data: bytes) -> tuple[int, dict]:
    status, _, body = request(server, "POST", "/predict", data)
    return status, json.loads(body)


def drawing(colour=(0, 0, 0, 255), background=(0, 0, 0, 0)) -> bytes:
    """A 7 as the page's canvas exports it (PNG)."""
    import io
    picture = Image.new("RGBA", (280, 280), background)
    ImageDraw.Draw(picture).line([(70, 60), (200, 60), (120, 230)], fill=colour, width=20, joint="curve")
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def still_answers(server) -> bool:
    status, answer = post_picture(server, drawing())
    return status == 200 and 0 <= answer["digit"] <= 9


def raw_exchange(server, data: bytes, wait: float = 5) -> bytes:
    """Send bytes as they are (a request http.client would not make) and read the answer, to the end."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as connection:
        connection.sendall(data)
        return read_answer(connection)


def read_answer(connection: socket.socket) -> bytes:
    """An answer's head and its body, as far as its Content-Length says."""
    received = b""
    while b"\r\n\r\n" not in received or len(received) < answer_end(received):
        chunk = connection.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def answer_end(received: bytes) -> int:
    head, _, _ = received.partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head)
    return len(head) + 4 + (int(length.group(1)) if length else 0)


def answer_json(received: bytes) -> tuple[int, dict]:
    """The status and the JSON body of a raw answer."""
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


class Local(NamedTuple):
    port: int
    server: object


@contextlib.contextmanager
def in_process_server(recognizer, connections: int = serve.SERVE_CONNECTIONS, host: str = "127.0.0.1",
                      **limits) -> Iterator[Local]:
    """The server's request handling in this process, with the given limits: no TensorFlow to start."""
    listener = serve.listening_socket(host, 0)
    handler = serve.make_handler(recognizer, b"<!doctype html>", "default-src 'none'", True,
                                 serve.served_names(host), **limits)
    server = serve.http_server(listener, handler, connections)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Local(listener.getsockname()[1], server)
    finally:
        server.shutdown()
        listener.close()


@pytest.fixture(scope="module")
def recognizer(model_file):
    return predict.Recognizer(model_file)


@pytest.fixture
def local(recognizer):
    with in_process_server(recognizer) as running:
        yield running


def test_the_page_is_served_with_a_strict_content_security_policy(server):
    status, headers, body = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    policy = headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy and "style-src 'sha256-" in policy
    assert "unsafe-inline" not in policy and "connect-src 'self'" in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    page = body.decode()
    for element in ("pad", "digit", "confidence", "probabilities", "seen", "clear", "undo", "upload", "message"):
        assert f'id="{element}"' in page, element
    assert "http://" not in page.replace(f"http://127.0.0.1:{server.port}", "")  # nothing from elsewhere
    assert "model.onnx" in page and "<!--model-->" not in page


def test_an_answer_has_the_digit_its_confidence_the_ten_probabilities_and_the_input(server):
    status, answer = post_picture(server, drawing())
    assert status == 200
    assert set(answer) == {"digit", "confidence", "probabilities", "input", "notes"}
    probabilities = np.array(answer["probabilities"])
    assert probabilities.shape == (10,) and probabilities.sum() == pytest.approx(1, abs=1e-3)
    assert answer["digit"] == probabilities.argmax() and answer["confidence"] == probabilities.max()
    seen = np.array(answer["input"])
    assert seen.shape == (28, 28) and 0 <= seen.min() and seen.max() <= 1 and seen.max() > 0.5


def test_the_api_and_predict_give_the_same_answer_for_the_same_picture(server, model_file, tmp_path):
    pictures = {"seven.png": drawing(), "white.png": drawing((255, 255, 255, 255))}
    for name, data in pictures.items():
        (tmp_path / name).write_bytes(data)
    done = predict_here(*(tmp_path / name for name in pictures), "--model", model_file, "--format", "json")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == len(pictures), done
    for line, data in zip(done.stdout.splitlines(), pictures.values()):
        expected = json.loads(line)
        _, answer = post_picture(server, data)
        assert answer["digit"] == expected["digit"]
        assert answer["probabilities"] == pytest.approx(expected["probabilities"], abs=2e-4)


def test_a_transparent_canvas_reads_the_same_with_white_or_black_strokes(server):
    _, black = post_picture(server, drawing((0, 0, 0, 255)))
    _, white = post_picture(server, drawing((255, 255, 255, 255)))
    assert black["digit"] == white["digit"]
    assert np.abs(np.array(black["input"]) - np.array(white["input"])).max() < 0.05


def test_real_model_reads_the_drawn_seven(server, real_mnist):
    assert post_picture(server, drawing())[1]["digit"] == 7


BAD_PICTURES = {
    "not an image": (b"hello, world", "not a PNG, JPEG, GIF, BMP, TIFF or WebP image"),
    "truncated": (drawing()[:200], "unreadable image"),
    "blank": (drawing(background=(255, 255, 255, 255), colour=(255, 255, 255, 255)),
              "no digit found (the image looks blank)"),
    "empty": (b"", "file is empty"),
}


@pytest.mark.parametrize("case", BAD_PICTURES)
def test_a_bad_picture_is_400_with_the_reason_and_the_server_carries_on(server, case):
    data, reason = BAD_PICTURES[case]
    status, answer = post_picture(server, data)
    assert status == 400 and answer["error"].startswith(reason)
    assert still_answers(server)


def test_other_paths_are_404_and_other_methods_405(server):
    for method, path, status in [("GET", "/train.py", 404), ("GET", "/../train.py", 404), ("GET", "/draw.html", 404),
                                 ("POST", "/elsewhere", 404), ("GET", "/predict", 405), ("PUT", "/predict", 405),
                                 ("DELETE", "/", 405), ("POST", "/", 405)]:
        answer_status, headers, body = request(server, method, path, b"" if method in ("POST", "PUT") else None)
        assert answer_status == status, (method, path)
        assert headers["Content-Type"] == "application/json" and "error" in json.loads(body)
    assert still_answers(server)


def test_a_body_without_a_length_is_411_and_the_client_reads_it_after_sending_its_body(server):
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + (b"100000\r\n" + bytes(2**20) + b"\r\n") * 21 + b"0\r\n\r\n")
    assert answer_json(answer) == (411, {"error": "send the picture with a Content-Length"})
    assert still_answers(server)


def test_an_oversized_picture_is_413_and_a_client_that_sends_it_all_still_reads_why(server):
    size = serve.SERVE_MAX_BYTES + 2**20
    started = time.perf_counter()
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % size
                          + bytes(size))
    assert answer_json(answer) == (413, {"error": f"picture too large: {size:,} bytes; at most 20 MiB"})
    assert time.perf_counter() - started < 5
    assert still_answers(server)


def test_expect_100_continue_is_refused_before_the_body_is_sent(local):
    with socket.create_connection(("127.0.0.1", local.port), timeout=5) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 50000000\r\n"
                           b"Expect: 100-continue\r\n\r\n")
        answer = read_answer(connection)
    assert answer_json(answer) == (413, {"error": "picture too large: 50,000,000 bytes; at most 20 MiB"})


def test_expect_100_continue_is_answered_once_the_length_is_accepted(local):
    picture = drawing()
    with socket.create_connection(("127.0.0.1", local.port), timeout=5) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n"
                           b"Expect: 100-continue\r\n\r\n" % len(picture))
        assert connection.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        connection.sendall(picture)
        assert answer_json(read_answer(connection))[0] == 200


BAD_LENGTHS = {  # what a Content-Length says, and the answer
    "superscript two": ("\u00b2", 400, "Content-Length must be a number of bytes, not '\u00b2'"),
    "five thousand digits": ("9" * 5000, 413, "picture too large: a Content-Length of 5,000 digits; at most 20 MiB"),
    "negative": ("-5", 400, "Content-Length is negative (-5)"),
    "words": ("ten", 400, "Content-Length must be a number of bytes, not 'ten'"),
}


@pytest.mark.parametrize("case", BAD_LENGTHS)
def test_a_bad_length_is_answered_with_what_is_wrong(local, case):
    length, status, reason = BAD_LENGTHS[case]
    answer = raw_exchange(local, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: "
                          + length.encode("latin-1") + b"\r\n\r\n")
    assert answer_json(answer) == (status, {"error": reason})
    assert still_answers(local)


def test_a_request_trickling_a_byte_at_a_time_is_cut_off_at_its_deadline_and_its_thread_freed(recognizer):
    with in_process_server(recognizer, connections=1, deadline=1) as local:
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", local.port), timeout=5) as trickling:
            trickling.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
            trickling.settimeout(0.2)
            answer = b""
            while time.perf_counter() - started < 5 and (b"\r\n\r\n" not in answer or len(answer) < answer_end(answer)):
                with contextlib.suppress(TimeoutError):
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered and closed: read it
                        trickling.sendall(b"x")  # each byte well inside any per-read timeout
                    answer += trickling.recv(4096)
        assert answer_json(answer) == (408, {"error": "the request did not arrive within 1 seconds"})
        assert 1 <= time.perf_counter() - started < 2.5
        assert still_answers(local)  # the one connection thread is free again


def test_a_request_that_stops_short_is_told_408(recognizer):
    with in_process_server(recognizer, deadline=0.5) as local:
        answer = raw_exchange(local, b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n12345")
    assert answer_json(answer) == (408, {"error": "the request did not arrive within 0.5 seconds"})


def test_connections_over_the_cap_wait_until_one_is_free(recognizer):
    with in_process_server(recognizer, connections=2) as local:
        idle = [socket.create_connection(("127.0.0.1", local.port)) for _ in range(2)]
        time.sleep(0.3)  # both taken up
        waiting = http.client.HTTPConnection("127.0.0.1", local.port, timeout=0.5)
        waiting.request("POST", "/predict", drawing())
        with pytest.raises(TimeoutError):
            waiting.getresponse()  # no thread is free to read it
        idle[0].close()
        waiting.sock.settimeout(5)
        assert waiting.getresponse().status == 200
        waiting.close()
        idle[1].close()


def test_pictures_held_at_once_are_bounded_a_request_waits_for_room_or_is_503(recognizer):
    picture = drawing()
    with in_process_server(recognizer, body_bytes=len(picture) + 10, deadline=1) as local:
        status, answer = post_picture(local, picture + bytes(11))  # more than all the room there is
        assert status == 503 and answer == {"error": "the server is busy: try again in a moment"}
        with socket.create_connection(("127.0.0.1", local.port)) as holding:
            holding.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(picture))
            time.sleep(0.5)  # its picture's bytes are set aside; it sends none of them, and is cut off at 1 s
            started = time.perf_counter()
            status, _ = post_picture(local, picture)
            assert status == 200 and time.perf_counter() - started > 0.3  # it waited for the room
        assert still_answers(local)  # the bytes are free again


def test_processes_1_answers_from_a_single_process(server):
    assert helper_processes(server) == 0 and still_answers(server)  # the shared server runs --processes 1


def test_ctrl_c_stops_the_server_cleanly_and_frees_the_port(model_file):
    server = start_server("--model", model_file)
    try:
        deadline = time.monotonic() + 30  # the address is said first; the helpers start after it
        while helper_processes(server) < serve.SERVE_PROCESSES - 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert helper_processes(server) == serve.SERVE_PROCESSES - 1  # one per core, at most 4
        assert all(still_answers(server) for _ in range(4))
    except BaseException:
        server.process.kill()  # its helpers leave with it
        raise
    code, err = stop_server(server, signal.SIGINT)
    assert code == 0 and "Traceback" not in err
    assert err.splitlines()[-1] == "Stopped."
    assert "POST /predict 200 " in err  # one log line per request
    assert port_is_free(server.port)  # every serving process has let go of it


def test_sigterm_stops_it_too_and_a_network_address_gets_a_warning(model_file):
    server = start_server("--model", model_file, "--host", "0.0.0.0", "--quiet", "--processes", "1")
    assert still_answers(server)
    code, err = stop_server(server, signal.SIGTERM)
    assert code == 0
    assert err.splitlines() == [f"warning: serving on 0.0.0.0: anyone who can reach this computer on port "
                                f"{server.port} can use the page and the API", "Stopped."]


def helpers_listening(pid: int, port: int) -> int:
    """How many of the server's helper processes hold its listening socket (from Linux's /proc)."""
    listening = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"}
    held = 0
    for child in helper_pids(pid):
        with contextlib.suppress(OSError):
            sockets = {os.readlink(fd)[8:-1] for fd in Path(f"/proc/{child}/fd").iterdir()
                       if os.readlink(fd).startswith("socket:[")}
            held += bool(sockets & listening)
    return held


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_killed_outright_its_helper_processes_leave_too_and_free_the_port(model_file):
    port = free_port()
    process = subprocess.Popen([sys.executable, str(SERVE), "--model", str(model_file),
                                "--port", str(port), "--processes", "2"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60  # a busy machine may take a while to start the helper
        while not helpers_listening(process.pid, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert helpers_listening(process.pid, port) == 1  # its helper has the port too
    finally:
        process.kill()  # no chance to stop its helper itself
        process.wait(timeout=30)
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_is_free(port)


def test_inputs_answered_by_many_threads_at_once_get_the_answers_they_get_alone(recognizer):
    rng = np.random.default_rng(0)
    images = [rng.random((28, 28), dtype=np.float32) for _ in range(200)]
    alone = [recognizer.probabilities(image) for image in images]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(recognizer.probabilities, images))
    for mine, expected in zip(together, alone):
        np.testing.assert_array_equal(mine, expected)


def test_the_server_runs_onnx_runtime_and_never_loads_tensorflow(server):
    if not Path("/proc/self/maps").exists():
        pytest.skip("needs Linux's /proc to see the libraries a process has loaded")
    loaded = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "onnxruntime" in loaded and "tensorflow" not in loaded


def test_a_busy_port_is_one_clear_line(model_file):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_program(SERVE, "--model", model_file, "--port", port, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: port {port} is already in use on 127.0.0.1; stop what uses it, "
                                   "or choose another with --port N (--port 0 takes any free port)")


def test_a_missing_model_is_one_line_before_tensorflow_starts(tmp_path):
    probe = ("import sys, serve\n"
             f"code = serve.main(['--model', {str(tmp_path / 'none.h5')!r}])\n"
             "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["1", "False"]
    assert done.stderr.strip() == f"error: {tmp_path / 'none.h5'}: no such model file; train one first with: python train.py"


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000"], "--port: must be from 0 to 65,535"),
    (["--processes", "0"], "--processes: must be from 1 to 32"),
    (["--processes", "many"], "--processes: expected a whole number, got 'many'"),
])
def test_serving_options_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        serve.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_address_is_printed_before_any_process_can_answer(model_file, monkeypatch):
    said_when = []

    class Helper:
        def terminate(self) -> None:
            pass

        def join(self) -> None:
            pass

    def helper(*args) -> Helper:
        said_when.append(("a helper starts", stdout.getvalue()))
        return Helper()

    def answering(*args):
        said_when.append(("the first process answers", stdout.getvalue()))
        raise KeyboardInterrupt

    monkeypatch.setattr(serve, "start_helper", helper)
    monkeypatch.setattr(serve, "answering_server", answering)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert serve.main(["--model", str(model_file), "--port", "0", "--processes", "3"]) == 0
    assert [moment for moment, _ in said_when] == ["a helper starts"] * 2 + ["the first process answers"]
    assert all(re.match(r"Draw digits at http://127\.0\.0\.1:\d+/ \(Ctrl-C to stop\)\n$", out) for _, out in said_when)


def test_a_server_open_to_the_network_prints_addresses_people_can_open(capsys):
    listener = serve.listening_socket("0.0.0.0", 0)
    port = listener.getsockname()[1]
    with listener:
        serve.announce(listener)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Draw digits at http://localhost:{port}/ (Ctrl-C to stop)"
    others = [f"http://{address}:{port}/" for address in serve.own_addresses()]
    assert lines[1] == f"From other computers: {' or '.join(others) or f'http://<this computer address>:{port}/'}"
    assert "0.0.0.0" not in "\n".join(lines)


def test_only_the_names_it_serves_under_are_answered(local):
    for host, status in [(f"127.0.0.1:{local.port}", 200), (f"localhost:{local.port}", 200), ("[::1]", 200),
                         (f"rebinding.example:{local.port}", 403), ("127.0.0.1.nip.io", 403), ("10.1.2.3", 403)]:
        answer_status, _, body = request(local, "GET", "/", headers={"Host": host})
        assert answer_status == status, host
        if status == 403:
            assert json.loads(body) == {"error": f"this server is not known as {host!r}: open it at the address it printed"}


def test_bound_to_every_address_it_answers_to_this_computers_names_only(recognizer):
    with in_process_server(recognizer, host="0.0.0.0") as local:
        for host, status in [(socket.gethostname(), 200), (f"127.0.0.1:{local.port}", 200),
                             (f"rebinding.example:{local.port}", 403)]:
            assert request(local, "GET", "/", headers={"Host": host})[0] == status, host


def test_a_request_from_another_pages_origin_is_403(local):
    same = f"http://127.0.0.1:{local.port}"
    status, _, _ = request(local, "POST", "/predict", drawing(), {"Origin": same})
    assert status == 200
    for origin in ("http://evil.example", "null", f"https://127.0.0.1:{local.port}"):
        status, _, body = request(local, "POST", "/predict", drawing(), {"Origin": origin})
        assert (status, json.loads(body)) == (403, {"error": f"requests from other pages ({origin}) are refused"})


def test_a_query_string_does_not_change_the_path(local):
    status, _, body = request(local, "POST", "/predict?from=script", drawing())
    assert status == 200 and 0 <= json.loads(body)["digit"] <= 9


def form_upload(files: dict[str, bytes], boundary: str = "----formboundary7MA4YWxk") -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body as curl -F file=@NAME sends it."""
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                    f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for name, data in files.items())
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'.encode() + body
    return body + f"--{boundary}--\r\n".encode(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def test_a_form_upload_of_one_file_is_read_as_the_file_itself(local):
    body, headers = form_upload({"seven.png": drawing()})
    status, _, answer = request(local, "POST", "/predict", body, headers)
    assert status == 200
    assert json.loads(answer)["probabilities"] == post_picture(local, drawing())[1]["probabilities"]
    body, headers = form_upload({"one.png": drawing(), "two.png": drawing()})
    status, _, answer = request(local, "POST", "/predict", body, headers)
    assert (status, json.loads(answer)) == (400, {"error": "a form upload must hold one file; this one holds 2"})


def test_an_empty_picture_is_said_as_predict_says_it(local, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(predict.PictureError) as predict_says:
        predict.load_picture(tmp_path / "empty.png")
    assert post_picture(local, b"") == (400, {"error": str(predict_says.value)})


def test_an_upload_larger_than_the_server_decodes_is_refused(local):
    buffer = io.BytesIO()
    Image.new("L", (4000, 3100), 255).save(buffer, "PNG")
    assert post_picture(local, buffer.getvalue()) == (
        400, {"error": "too large to read safely (4000x3100 pixels; at most 12 megapixels)"})


def test_a_jpeg_counts_at_the_reduced_size_it_is_decoded_at():
    picture = Image.new("L", (4000, 3200), 255)
    ImageDraw.Draw(picture).line([(1000, 800), (3000, 800), (1800, 2800)], fill=0, width=120)
    for kind in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        picture.save(buffer, kind)
        buffer.seek(0)
        if kind == "JPEG":  # decoded at half size, 2000x1600 pixels, then shrunk
            assert predict.decode_picture(buffer, max_pixels=4_000_000).shape == (819, 1024)
        else:
            with pytest.raises(predict.PictureError, match=r"\(4000x3200 pixels; at most 4 megapixels\)"):
                predict.decode_picture(buffer, max_pixels=4_000_000)


def test_a_photo_turned_by_its_exif_orientation_is_read_upright():
    upright = Image.new("L", (600, 800), 240)
    ImageDraw.Draw(upright).line([(150, 150), (450, 150), (250, 650)], fill=20, width=30)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # as a camera held sideways stores it
    exif = Image.Exif()
    exif[predict.EXIF_ORIENTATION] = 6  # "turn 90 degrees clockwise to show it"
    readings = []
    for picture, extra in ((upright, {}), (stored, {"exif": exif.tobytes()})):
        buffer = io.BytesIO()
        picture.save(buffer, "JPEG", quality=95, **extra)
        buffer.seek(0)
        readings.append(predict.read_digit(predict.decode_picture(buffer)).image)
    assert np.abs(readings[0] - readings[1]).max() < 0.1


def test_the_default_process_count_is_the_cores_this_process_may_run_on():
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs CPU affinity (Linux) and two cores to run on")
    done = subprocess.run([sys.executable, "-c", "import serve; print(serve.SERVE_PROCESSES)"], cwd=ROOT,
                          capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {0}))
    assert done.stdout.split() == ["1"], done.stderr


def test_the_server_never_blocks_on_its_own_log(server):
    """Each request's log line goes to stderr: here more than a pipe holds (64 KiB, and as much in the
    stderr filter's), read by the fixture as it comes. The requests are sent at once (pipelined)."""
    count = 1000  # about 210 KiB of log
    one = b"GET /?" + b"x" * 198 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        sending = threading.Thread(target=connection.sendall, args=(one * count,))
        sending.start()
        answered, tail = 0, b""
        while answered < count:
            chunk = connection.recv(2**16)
            assert chunk, "the server closed the connection"
            answered += (tail + chunk).count(b"HTTP/1.1 200 ")
            tail = chunk[-12:]  # shorter than the status line: none is counted twice
        sending.join()
    assert still_answers(server)
