"""The example tasks: the FastAPI background-tasks tutorial's notification, and a
heavy report that belongs on Celery."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from dispatcher import RetryPolicy, task

#: The example app's setting: the directory its tasks write files to.
DATA_DIR_ENV = "API_DATA_DIR"
#: Used when API_DATA_DIR is unset or empty; relative to the working directory.
DEFAULT_DATA_DIR = ".run/api"


class DataDirError(RuntimeError):
    """The example tasks' data directory cannot be created or written."""


def data_dir() -> Path:
    """The directory the example tasks write to: ``$API_DATA_DIR``, else ``.run/api``
    under the working directory. Created when missing; raises :class:`DataDirError`,
    naming the setting, when this process cannot write there."""
    configured = os.environ.get(DATA_DIR_ENV, "")
    path = Path(configured or DEFAULT_DATA_DIR)
    source = f"{DATA_DIR_ENV}={configured}" if configured else f"{DATA_DIR_ENV} unset"
    fix = f"set {DATA_DIR_ENV} to a directory that uid {os.getuid()} can write"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataDirError(
            f"cannot create the data directory {path.absolute()} ({source}): "
            f"{error.strerror}; {fix}"
        ) from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataDirError(
            f"the data directory {path.absolute()} ({source}) is not writable for "
            f"uid {os.getuid()}; {fix}"
        )
    return path


def notifications_file() -> Path:
    return data_dir() / "notifications.log"


@task(weight=1)
def write_notification(email: str, message: str = "") -> None:
    """Append one notification line to ``notifications.log`` in the data directory
    (light: runs inline)."""
    with notifications_file().open(mode="a") as handle:
        handle.write(f"notification for {email}: {message}\n")


@task(
    weight=8,
    priority="high",
    timeout=60,
    retry=RetryPolicy(
        max_attempts=5, base_delay=1.0, max_delay=60.0, jitter=True, retry_on=(ConnectionError,)
    ),
)
async def generate_report(report_id: int) -> dict[str, object]:
    """Build a report (heavy: goes to Celery); simulated by a short async wait."""
    started = time.time()
    await asyncio.sleep(0.2)
    took = round(time.time() - started, 3)
    return {"report_id": report_id, "rows": report_id * 10, "took_s": took}


@task(weight="auto")
def make_thumbnail(
    image_id: int, size: Annotated[int, Field(ge=16, le=1024)] = 128
) -> dict[str, int]:
    """Render a thumbnail (simulated): routed by its measured run time, inline while it
    is quick, on Celery once its p95 exceeds DISPATCH_INLINE_MAX_SECONDS."""
    time.sleep(size / 100_000)
    return {"image_id": image_id, "size": size}
