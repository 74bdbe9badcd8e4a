"""The two routes, independent of each other: ``inline`` (in this process, after the
response) and ``celery`` (Celery on Redis). They meet only through the ``Route`` port,
wired by ``dispatcher.runtime``."""
