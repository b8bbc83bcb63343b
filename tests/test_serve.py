"""--serve: the drawing page and POST /predict, as a browser, a script and a careless client use them."""
from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import train
from conftest import ROOT, TRAIN, helper_pids, helper_processes, run_here, run_train, start_server, stop_server


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
    """Send bytes as they are (a request http.client would not make) and read the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as connection:
        connection.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = connection.recv(4096)
            if not chunk:
                break
            received += chunk
        return received


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
    assert "model.h5" in page and "<!--model-->" not in page


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
    done = run_here("--predict", *(tmp_path / name for name in pictures), "--model", model_file, "--format", "json")
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
    "empty": (b"", "not a PNG, JPEG, GIF, BMP, TIFF or WebP image"),
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


def test_a_body_without_a_length_is_411(server):
    answer = raw_exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 411 ")
    assert still_answers(server)


def test_an_oversized_declared_length_is_refused_at_once_without_reading_the_body(server):
    started = time.perf_counter()
    answer = raw_exchange(server, f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {10**9}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 413 ") and time.perf_counter() - started < 2
    assert still_answers(server)


def test_a_silent_client_does_not_hold_the_others(server):
    with socket.create_connection(("127.0.0.1", server.port)) as idle:
        idle.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 1000\r\n\r\n")  # and then nothing
        started = time.perf_counter()
        assert still_answers(server)
        assert time.perf_counter() - started < 2


def test_processes_1_answers_from_a_single_process(server):
    assert helper_processes(server) == 0 and still_answers(server)  # the shared server runs --processes 1


def test_ctrl_c_stops_the_server_cleanly_and_frees_the_port(model_file):
    server = start_server("--model", model_file)
    assert helper_processes(server) == train.SERVE_PROCESSES - 1  # one per core, at most 4
    assert all(still_answers(server) for _ in range(4))
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
    process = subprocess.Popen([sys.executable, str(TRAIN), "--serve", "--model", str(model_file),
                                "--port", str(port), "--processes", "2"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not helpers_listening(process.pid, port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert helpers_listening(process.pid, port) == 1  # its helper has the port too
    process.kill()  # no chance to stop its helper itself
    process.wait(timeout=30)
    while not port_is_free(port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert port_is_free(port)


def test_inputs_answered_together_get_the_answers_they_get_alone(model_file):
    recognizer = train.Recognizer(model_file)
    rng = np.random.default_rng(0)
    images = [rng.random((28, 28), dtype=np.float32) for _ in range(40)]
    alone = [recognizer.probabilities([image])[0] for image in images]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(recognizer.answer, images))
    for mine, expected in zip(together, alone):
        np.testing.assert_allclose(mine, expected, rtol=1e-5, atol=1e-6)


def test_a_busy_port_is_one_clear_line(model_file):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_train("--serve", "--model", model_file, "--port", port, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"error: port {port} is already in use on 127.0.0.1; stop what uses it, "
                                   "or choose another with --port N (--port 0 takes any free port)")


def test_a_missing_model_is_one_line_before_tensorflow_starts(tmp_path):
    probe = ("import sys, train\n"
             f"code = train.main(['--serve', '--model', {str(tmp_path / 'none.h5')!r}])\n"
             "print(code, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.split() == ["1", "False"]
    assert done.stderr.strip() == f"error: {tmp_path / 'none.h5'}: no such model file; train one first with: python train.py"


@pytest.mark.parametrize("argv, message", [
    (["--port", "70000", "--serve"], "--port: must be from 0 to 65,535"),
    (["--port", "80"], "--port: only with --serve"),
    (["--host", "0.0.0.0"], "--host: only with --serve"),
    (["--serve", "--predict", "a.png"], "--serve: not with --predict"),
    (["--processes", "2"], "--processes: only with --serve"),
    (["--serve", "--processes", "0"], "--processes: must be from 1 to 32"),
])
def test_serving_options_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
