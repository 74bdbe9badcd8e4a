"""Redis URLs as the settings accept them: one server (``redis://``, ``rediss://``,
``unix://``) or the Sentinels that watch a master
(``sentinel://host:port;sentinel://host:port``, the list kombu and Celery read).

A Sentinel URL list names the Sentinels; the master's name comes from
``DISPATCH_SENTINEL_MASTER`` and the Sentinels' own password from
``DISPATCH_SENTINEL_PASSWORD``. Credentials and database in the URL are those of the
Redis servers (master and replicas), read from the first part as kombu and Celery do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import SecretStr

#: The port a Sentinel listens on unless the URL names another.
SENTINEL_PORT = 26379
SERVER_SCHEMES = frozenset({"redis", "rediss", "unix"})
#: Between two URLs of a list: a ``;`` followed by the next URL's scheme.
_LIST_SEPARATOR = re.compile(r";(?=[A-Za-z][A-Za-z0-9+.-]*://)")


@dataclass(frozen=True, slots=True)
class SentinelOptions:
    """What a client needs besides the URL list: the master's name and the password
    of the Sentinels themselves."""

    master: str
    password: SecretStr | None = None


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """What a ``sentinel://`` URL list names: the Sentinels to ask, and the database
    and credentials of the master they point at."""

    nodes: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def split_urls(url: str) -> list[str]:
    """``a://...;b://...`` as its URLs (a ``;`` inside one URL's query stays in it)."""
    return _LIST_SEPARATOR.split(url)


def is_sentinel_url(url: str) -> bool:
    return urlsplit(url).scheme == "sentinel"


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The Sentinels, database and credentials of ``sentinel://`` URL list ``url``;
    ValueError (naming no secret) if it is not one."""
    nodes: list[tuple[str, int]] = []
    db: int | None = None
    username: str | None = None
    password: str | None = None
    for index, part in enumerate(split_urls(url.strip())):
        parts = urlsplit(part)
        if parts.scheme != "sentinel":
            raise ValueError("every URL of a Sentinel list must be sentinel://host:port")
        if parts.query or parts.fragment:
            raise ValueError("sentinel:// URLs take no query options")
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            raise ValueError("a sentinel:// URL has an invalid port") from None
        if not parts.hostname:
            raise ValueError("a sentinel:// URL names no host")
        nodes.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError("the database of a sentinel:// URL must be a number (/0)")
        part_db = int(path) if path else None
        part_user = unquote(parts.username) if parts.username else None
        part_password = unquote(parts.password) if parts.password is not None else None
        if index == 0:
            db, username, password = part_db, part_user, part_password
        elif (part_db not in (None, db) or part_user not in (None, username)
              or part_password not in (None, password)):
            raise ValueError("the URLs of a Sentinel list name different databases or "
                             "credentials (kombu and Celery use the first URL's)")
    return SentinelTarget(tuple(nodes), db or 0, username, password)


def check_redis_url(url: str | None, sentinel_master: str | None) -> str | None:
    """``url`` if the settings can use it; ValueError saying why not (never echoing
    the URL, which may hold a password)."""
    if url is None:
        return None
    scheme = urlsplit(url).scheme
    if scheme == "sentinel":
        parse_sentinel_url(url)
        if not sentinel_master:
            raise ValueError(
                "a sentinel:// URL needs DISPATCH_SENTINEL_MASTER, the name of the master "
                "the Sentinels watch (their `sentinel monitor <name> ...`)")
        return url
    if scheme not in SERVER_SCHEMES:
        raise ValueError("must be a redis://, rediss://, unix:// or sentinel:// URL")
    return url


def redact_url(url: str | None) -> str | None:
    """The URL with any password replaced, safe for logs and API answers."""
    if url is None:
        return None
    if len(urls := split_urls(url)) > 1:  # a Sentinel list: each URL may hold a password
        return ";".join(str(redact_url(part)) for part in urls)
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    query = "&".join(
        f"{key}=***" if key.lower() in _SECRET_PARAMS else f"{key}={value}" if sep else key
        for key, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))


_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "secret", "token"})
