#!/usr/bin/env python3
"""How fast does python serve.py answer a classroom drawing at once?

    python tests/serve_benchmark.py --model model.h5 --clients 30 --requests 10000

Starts the server on a free port with the trained model, warms it up, then runs --clients
concurrent clients, each on its own keep-alive connection posting canvas-like drawings
(PNGs of pen strokes, 140x140 as the page sends them), until --requests answers in all:
first paced as the page paces itself while someone draws (a request at most every 150 ms,
each client starting at a random moment of its first 150 ms: 200 a second in all), then at
250 a second in all (a quarter above the goal of 200), then as fast as answers come back. The clients share one event loop, which costs the machine little, so that its cores go
to the server as they would with a classroom's own phones and laptops. Prints answers per
second, latency percentiles, errors, the server's CPU, and the resident memory of all its
processes before and after each.

Last, a hostile phase: while 10 clients keep drawing at the page's pace, 30 clients upload
pictures of about 20 MB at about 1 MB/s each (a 59-megapixel JPEG or a PNG of noise), over and
over, and 100 connections are opened and left silent (opened again when the server closes
them). Prints the page clients' latency and errors and the server's peak memory growth.
Run by hand: pytest does not collect it, and it asserts nothing, because timings on a shared
machine are figures to read, not to test.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 200
SENT_SIZE = 140  # draw.html's SENT_SIZE: the pixels a side of what the page posts
PAGE_PACE = 0.150  # seconds: draw.html's THROTTLE_MS, the most often a page asks while drawing
GOAL_PACE = 0.120  # seconds: 30 clients at this pace ask 250 times a second, a quarter above the goal of 200


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


def serving_processes(pid: int) -> list[int]:
    """The server's process and its helpers (its children, less the stderr filter and bookkeeping)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid, *(int(child) for child in children if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text())]


def cpu_seconds(pids: list[int]) -> float:
    """User and system time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def resident_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        status = Path(f"/proc/{pid}/status").read_text()
        total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    return total / 1024


def http_request(body: bytes) -> bytes:
    return (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


async def client(port: int, requests: list[bytes], pace: float, quota: list[int],
                 latencies: list[float], errors: list[str]) -> None:
    """Post drawings on one keep-alive connection, one per `pace` seconds at most, until the shared
    quota is used up. A paced client starts at a random moment of its first period, as people do
    not all put pen to pad in the same millisecond."""
    if pace:
        await asyncio.sleep(random.uniform(0, pace))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = 0
    while quota[0] > 0:
        quota[0] -= 1
        request = requests[index % len(requests)]
        index += 1
        started = time.perf_counter()
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"Content-Length: (\d+)", head)
            await reader.readexactly(int(length.group(1)) if length else 0)
            status = int(head.split(b" ", 2)[1])
            if status not in (200, 400):  # 400: a scribble with no digit is a fair answer
                errors.append(f"HTTP {status}")
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
            errors.append(repr(error))
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, pace - (time.perf_counter() - started)))
    writer.close()


def run_clients(port: int, clients: int, requests: int, bodies: list[bytes],
                pace: float = 0.0) -> tuple[float, list[float], list[str]]:
    """Run the clients in one event loop: cheap enough that the machine's cores go to the server."""
    quota, latencies, errors = [requests], [], []
    prepared = [http_request(body) for body in bodies]

    async def everyone() -> None:
        await asyncio.gather(*(client(port, prepared, pace, quota, latencies, errors) for _ in range(clients)))

    started = time.perf_counter()
    asyncio.run(everyone())
    return time.perf_counter() - started, latencies, errors


def huge_pictures(rng: np.random.Generator) -> list[bytes]:
    """Two pictures of about 20 MB: a 59-megapixel JPEG (8900x6600) and a PNG of noise (6.7 megapixels)."""
    coarse = Image.fromarray(rng.integers(0, 256, (1650, 2225, 3), dtype=np.uint8))
    made = []
    for picture, kind, options in ((coarse.resize((8900, 6600), Image.Resampling.BILINEAR), "JPEG", {"quality": 80}),
                                   (Image.fromarray(rng.integers(0, 256, (2580, 2580, 3), dtype=np.uint8)), "PNG",
                                    {"compress_level": 1})):
        buffer = io.BytesIO()
        picture.save(buffer, kind, **options)
        made.append(buffer.getvalue())
    return made


async def slow_uploader(port: int, picture: bytes, until: float, answers: list[str]) -> None:
    """Upload `picture` at about 1 MB/s, again and again, until `until`, reading whatever the server
    answers (an upload cut off by the end of the phase is not counted)."""
    head = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % len(picture))
    while time.perf_counter() < until:
        writer = answer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
            writer.write(head)
            for start in range(0, len(picture), 2**16):
                if answer.done() or time.perf_counter() >= until:
                    break
                writer.write(picture[start:start + 2**16])
                await writer.drain()
                await asyncio.sleep(2**16 / 1e6)
            done, _ = await asyncio.wait([answer], timeout=max(0.0, until - time.perf_counter()))
            if done:
                answers.append(f"HTTP {int(answer.result().split()[1])}")
        except (OSError, ValueError, asyncio.IncompleteReadError) as error:
            answers.append(type(error).__name__)
        finally:
            if answer is not None and not answer.done():
                answer.cancel()
            elif answer is not None:
                answer.exception()  # read, so that asyncio does not report it as never retrieved
            if writer is not None:
                writer.close()


async def silent_connection(port: int, until: float) -> None:
    """A connection that says nothing; opened again when the server closes it."""
    while time.perf_counter() < until:
        with contextlib.suppress(OSError):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(reader.read(), until - time.perf_counter())
            writer.close()


async def peak_memory(processes: list[int], until: float, peak: list[float]) -> None:
    while time.perf_counter() < until:
        peak[0] = max(peak[0], resident_mib(processes))
        await asyncio.sleep(0.1)


def hostile_phase(port: int, processes: list[int], bodies: list[bytes], seconds: float) -> None:
    pictures = huge_pictures(np.random.default_rng(1))
    print(f"under attack for {seconds:.0f} s: 30 clients uploading pictures of "
          f"{min(map(len, pictures)) / 1e6:.0f}-{max(map(len, pictures)) / 1e6:.0f} MB at about 1 MB/s, "
          f"100 silent connections, and 10 clients drawing (one request per 150 ms per client at most):")
    quota, latencies, errors, answers = [10**9], [], [], []
    prepared = [http_request(body) for body in bodies]
    before = resident_mib(processes)
    peak = [before]

    async def everyone() -> None:
        until = time.perf_counter() + seconds

        async def stop_drawing() -> None:
            await asyncio.sleep(seconds)
            quota[0] = 0

        await asyncio.gather(peak_memory(processes, until + 2, peak), stop_drawing(),
                             *(silent_connection(port, until) for _ in range(100)),
                             *(slow_uploader(port, pictures[index % 2], until, answers) for index in range(30)),
                             *(client(port, prepared, PAGE_PACE, quota, latencies, errors) for _ in range(10)))

    started = time.perf_counter()
    asyncio.run(everyone())
    seconds = time.perf_counter() - started
    after = resident_mib(processes)
    cuts = statistics.quantiles(latencies, n=100)
    print(f"  drawing clients: {len(latencies):,} answers, p50 {1000 * cuts[49]:.1f} ms, p99 {1000 * cuts[98]:.1f} ms, "
          f"max {1000 * max(latencies):.1f} ms; errors: {len(errors)}" + (f" (first: {errors[0]})" if errors else ""))
    print("  uploaders' answers: " + ", ".join(f"{answers.count(answer)} x {answer}" for answer in sorted(set(answers))))
    print(f"  server memory (resident): {before:.0f} MiB before, peak {peak[0]:.0f} MiB (growth {peak[0] - before:+.0f} MiB), "
          f"{after:.0f} MiB after")


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


def wait_for_first_answer(port: int, body: bytes) -> None:
    """Return once the server has answered a drawing (it listens, and says so, before it can answer)."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/predict", body, {"Content-Type": "image/png"})
    assert connection.getresponse().status == 200
    connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("model.h5"), help="the trained model (default: model.h5)")
    parser.add_argument("--clients", type=int, default=30, help="concurrent clients (default: 30)")
    parser.add_argument("--requests", type=int, default=10_000, help="answers to ask for in all (default: 10000)")
    parser.add_argument("--hostile-seconds", type=float, default=40, help="how long the hostile phase lasts (default: 40)")
    parser.add_argument("--only-hostile", action="store_true", help="run the hostile phase only")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"--model: {args.model} is not a file; train one first with: python train.py")

    bodies = drawings(50, np.random.default_rng(0))
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, str(ROOT / "serve.py"), "--port", "0", "--quiet",
                               "--model", str(args.model)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = server.stdout.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        wait_for_first_answer(port, bodies[0])
        first_answer = time.perf_counter() - started
        random.seed(0)  # the paced clients' starting moments
        run_clients(port, 4, WARM_UP, bodies)
        processes = serving_processes(server.pid)
        print(f"server: {len(processes)} processes answering, {resident_mib(processes) / len(processes):.0f} MiB "
              f"resident each after warming up; start-up to the first answer {first_answer:.2f} s")
        phases = (("paced as the page paces itself (one request per 150 ms per client at most)", PAGE_PACE),
                  ("paced at 250 requests a second in all (one per 120 ms per client)", GOAL_PACE),
                  ("as fast as answers come back", 0.0))
        for name, pace in phases[len(phases) if args.only_hostile else 0:]:
            before, cpu = resident_mib(processes), cpu_seconds(processes)
            seconds, latencies, errors = run_clients(port, args.clients, args.requests, bodies, pace)
            after, cpu = resident_mib(processes), cpu_seconds(processes) - cpu
            report(name, args.clients, seconds, latencies, errors, before, after)
            print(f"  server CPU: {cpu / seconds:.2f} cores busy, {1000 * cpu / len(latencies):.1f} ms per answer")
        hostile_phase(port, processes, bodies, args.hostile_seconds)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
