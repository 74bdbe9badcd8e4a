"""A small HTTP/1.1 keep-alive load generator (run as its own process).

``python -m bench.load URL --connections 32 --seconds 5 [--requests N]`` prints one
JSON line: requests, errors, seconds, rps, p50_ms, p99_ms, mean_ms. Each connection
sends the next request once the previous answer has arrived (closed loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


async def _connection(host: str, port: int, path: str, method: str, deadline: float,
                      budget: list[int], latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    request = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 2"):
                errors[0] += 1
    finally:
        writer.close()


async def run(url: str, connections: int, seconds: float, requests: int, method: str
              ) -> dict[str, float]:
    parts = urlsplit(url)
    latencies: list[float] = []
    errors = [0]
    budget = [requests]
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(
        _connection(parts.hostname or "127.0.0.1", parts.port or 80,
                    (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                    method, deadline, budget, latencies, errors)
        for _ in range(connections)
    ))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        "mean_ms": round(statistics.fmean(ordered) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=10**9)
    parser.add_argument("--method", default="POST")
    args = parser.parse_args()
    result = asyncio.run(run(args.url, args.connections, args.seconds, args.requests,
                             args.method))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
