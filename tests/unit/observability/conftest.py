"""Fixtures of the logging tests."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def pristine_logger() -> Iterator[logging.Logger]:
    """The ``dispatcher`` logger with no handler or filter, put back as it was after."""
    logger = logging.getLogger("dispatcher")
    saved = (list(logger.handlers), list(logger.filters), logger.level, logger.propagate)
    for handler in saved[0]:
        logger.removeHandler(handler)
    # pytest attaches its capture handlers to non-propagating loggers when a test
    # phase starts; a propagating logger keeps them out of this test's view
    # (configure_logging, in a test, makes it non-propagating again).
    logger.propagate = True
    yield logger
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    for handler in saved[0]:
        logger.addHandler(handler)
    logger.filters[:] = saved[1]
    logger.setLevel(saved[2])
    logger.propagate = saved[3]
