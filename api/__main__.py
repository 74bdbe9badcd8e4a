"""``python -m api``: the whole product on one machine (what ``make run`` starts).

Starts an embedded Redis when no broker URL is set, one Celery worker and the API
on 127.0.0.1 (port 8000 by default). Ctrl-C or SIGTERM stops all of them, by pid.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from dispatcher.store.embedded import EmbeddedRedis


def _stop(process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8000")))
    parser.add_argument("--concurrency", type=int, default=2, help="Celery worker processes")
    parser.add_argument("--workers", type=int, default=1,
                        help="API processes (uvicorn --workers); their metrics are added up")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")

    env = dict(os.environ)
    env.setdefault("DISPATCH_TASK_MODULES", "api.tasks")
    env.setdefault("PYTHONUNBUFFERED", "1")
    redis_server = None
    metrics_dir = None
    if args.workers > 1 and not env.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several processes: prometheus-client's multiprocess mode adds their counters up.
        metrics_dir = tempfile.TemporaryDirectory(prefix="api-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    if not (env.get("DISPATCH_BROKER_URL") or env.get("REDIS_URL")):
        redis_server = EmbeddedRedis().start()
        env["DISPATCH_BROKER_URL"] = redis_server.url
        print(f"run: embedded Redis on {redis_server.url} (pid {redis_server.pid})", flush=True)

    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    children: list[subprocess.Popen[bytes]] = []
    try:
        # Own sessions: Ctrl-C reaches only us, and we stop each child in order.
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "worker", "--concurrency", str(args.concurrency)],
                env=env,
                start_new_session=True,
            )
        )
        children.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "api.main:app",
                    "--host",
                    args.host,
                    "--port",
                    str(args.port),
                    "--workers",
                    str(args.workers),
                ],
                env=env,
                start_new_session=True,
            )
        )
        print(
            f"run: API on http://{args.host}:{args.port} (pid {children[1].pid}, "
            f"{args.workers} process{'es' if args.workers > 1 else ''}), "
            f"worker pid {children[0].pid}; Ctrl-C stops all",
            flush=True,
        )
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.2)
        failed = [c for c in children if c.poll() not in (None, 0)]
        if failed and not stopping:
            if children[1] in failed:
                print(f"run: the API exited with {children[1].returncode} (see above); if "
                      f"port {args.port} is taken, use --port or API_PORT", flush=True)
            if children[0] in failed:
                print(f"run: the worker exited with {children[0].returncode} (see above)",
                      flush=True)
            return 1
        return 0
    finally:
        for child in reversed(children):
            _stop(child)
        if redis_server is not None:
            redis_server.close()
        if metrics_dir is not None:
            metrics_dir.cleanup()
        print("run: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
