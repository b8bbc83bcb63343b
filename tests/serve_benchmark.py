#!/usr/bin/env python3
"""How fast does python train.py --serve answer a classroom drawing at once?

    python tests/serve_benchmark.py --model model.h5 --clients 30 --requests 10000

Starts the server on a free port with the trained model, warms it up, then runs --clients
concurrent clients, each on its own keep-alive connection posting canvas-like drawings
(PNGs of pen strokes, 140x140 as the page sends them), until --requests answers in all:
first paced as the page paces itself while someone draws (a request at most every 150 ms),
then as fast as answers come back. Prints answers per second, latency percentiles, errors,
and the server's resident memory before and after each. Run by hand: pytest does not collect it, and it
asserts nothing, because timings on a shared machine are figures to read, not to test.
"""
from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 200
SENT_SIZE = 140  # draw.html's SENT_SIZE: the pixels a side of what the page posts
PAGE_PACE = 0.150  # seconds: draw.html's THROTTLE_MS, the most often a page asks while drawing


def drawings(count: int, rng: np.random.Generator) -> list[bytes]:
    """Canvas-like PNGs: a few random pen strokes, dark on light, drawn on a 280x280 pad and sent at
    140x140, as draw.html sends them."""
    made = []
    for _ in range(count):
        picture = Image.new("RGBA", (280, 280), (251, 250, 246, 255))
        draw = ImageDraw.Draw(picture)
        for _ in range(int(rng.integers(1, 4))):
            points = [tuple(map(float, rng.uniform(50, 230, 2))) for _ in range(int(rng.integers(2, 6)))]
            draw.line(points, fill=(17, 17, 17, 255), width=20, joint="curve")
        buffer = io.BytesIO()
        picture.resize((SENT_SIZE, SENT_SIZE), Image.Resampling.BILINEAR).save(buffer, "PNG")
        made.append(buffer.getvalue())
    return made


def cpu_seconds(pid: int) -> float:
    """User and system time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def resident_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def client(port: int, bodies: list[bytes], pace: float, quota: list[int], lock: threading.Lock,
           latencies: list[float], errors: list[str]) -> None:
    """Post drawings on one keep-alive connection, one per `pace` seconds at most, until the shared quota is used up."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    index = 0
    while True:
        with lock:
            if quota[0] <= 0:
                break
            quota[0] -= 1
        body = bodies[index % len(bodies)]
        index += 1
        started = time.perf_counter()
        try:
            connection.request("POST", "/predict", body=body, headers={"Content-Type": "image/png"})
            response = connection.getresponse()
            response.read()
            if response.status not in (200, 400):  # 400: a scribble with no digit is a fair answer
                errors.append(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as error:
            errors.append(repr(error))
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies.append(time.perf_counter() - started)
        time.sleep(max(0.0, pace - (time.perf_counter() - started)))
    connection.close()


def run_clients(port: int, clients: int, requests: int, bodies: list[bytes],
                pace: float = 0.0) -> tuple[float, list[float], list[str]]:
    quota, lock, latencies, errors = [requests], threading.Lock(), [], []
    threads = [threading.Thread(target=client, args=(port, bodies, pace, quota, lock, latencies, errors))
               for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, errors


def report(name: str, clients: int, seconds: float, latencies: list[float], errors: list[str],
           before: float, after: float) -> None:
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{name}:")
    print(f"  {len(latencies):,} requests from {clients} concurrent clients in {seconds:.1f} s: "
          f"{len(latencies) / seconds:.0f} answers per second")
    print(f"  latency: p50 {1000 * cuts[49]:.1f} ms, p95 {1000 * cuts[94]:.1f} ms, p99 {1000 * cuts[98]:.1f} ms, "
          f"max {1000 * max(latencies):.1f} ms")
    print(f"  errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print(f"  server memory (resident): {before:.0f} MiB before, {after:.0f} MiB after, growth {after - before:+.1f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model.h5"), help="the trained model (default: model.h5)")
    parser.add_argument("--clients", type=int, default=30, help="concurrent clients (default: 30)")
    parser.add_argument("--requests", type=int, default=10_000, help="answers to ask for in all (default: 10000)")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"--model: {args.model} is not a file; train one first with: python train.py")

    server = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--serve", "--port", "0", "--quiet",
                               "--model", str(args.model)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        bodies = drawings(50, np.random.default_rng(0))
        run_clients(port, 4, WARM_UP, bodies)
        for name, pace in (("paced as the page paces itself (one request per 150 ms per client at most)", PAGE_PACE),
                           ("as fast as answers come back", 0.0)):
            before, cpu = resident_mib(server.pid), cpu_seconds(server.pid)
            seconds, latencies, errors = run_clients(port, args.clients, args.requests, bodies, pace)
            after, cpu = resident_mib(server.pid), cpu_seconds(server.pid) - cpu
            report(name, args.clients, seconds, latencies, errors, before, after)
            print(f"  server CPU: {cpu / seconds:.2f} cores busy, {1000 * cpu / len(latencies):.1f} ms per answer")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
