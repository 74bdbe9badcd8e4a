"""An event loop in a daemon thread, started on first use: the inline executor runs
coroutine tasks and waits out countdowns and retry delays on it."""

from __future__ import annotations

import asyncio
import threading


class BackgroundLoop:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def _alive(self) -> bool:
        return self._loop is not None and self._thread is not None and self._thread.is_alive()

    def get(self) -> asyncio.AbstractEventLoop:
        """The running loop, started now if need be."""
        loop = self._loop
        if loop is not None and self._alive():
            return loop
        with self._lock:
            if self._loop is not None and self._alive():
                return self._loop
            loop = asyncio.new_event_loop()
            started = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(started.set)
                loop.run_forever()
                # Stopped by stop(): cancel what is left so nothing dangles at exit.
                leftover = asyncio.all_tasks(loop)
                for pending in leftover:
                    pending.cancel()
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.close()

            self._thread = threading.Thread(target=run, name=self.name, daemon=True)
            self._loop = loop
            self._thread.start()
        started.wait()
        return loop

    def stop(self, timeout: float) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=timeout)
