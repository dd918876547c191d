"""Where an order file comes from: a local path, or an ``https://`` URL (the raw file a cloud job published;
``http://`` only to this machine). Bounded in size and time; redirects are held to the same rules."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from agent.settings import is_loopback

MAX_BYTES = 1_000_000        # an order file is a few kB; a megabyte is a mistake (or not an order file)
TIMEOUT = 15.0


class FetchError(Exception):
    """The file could not be had; the message says why and what to do."""


@dataclass(frozen=True)
class Fetched:
    data: bytes
    name: str                      # the path or URL as shown to the trader
    url: str | None                # set for a URL
    results_path: Path             # where <file>.results.json goes


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise FetchError(f"{url!r} is not a valid URL") from None
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host and is_loopback(host):
        return
    if parts.scheme == "http":
        raise FetchError(f"{url} uses plain http:// to another machine: use https:// (http:// is accepted for "
                         f"this machine only)")
    raise FetchError(f"{url} is not an https:// URL")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(source: str, *, max_bytes: int = MAX_BYTES, timeout: float = TIMEOUT, cwd: Path | None = None) -> Fetched:
    """The file's bytes. FetchError (with the reason) when it cannot be read, or is over ``max_bytes``."""
    if "://" in source:
        return _fetch_url(source, max_bytes, timeout, cwd or Path.cwd())
    path = Path(source).expanduser()
    if not path.exists():
        raise FetchError(f"no such file: {path}")
    if not path.is_file():
        raise FetchError(f"{path} is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise FetchError(f"{path} is {size:,} bytes, over the {max_bytes:,}-byte limit for an order file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise FetchError(f"{path} cannot be read ({e.strerror or e})") from None
    return Fetched(data, str(path), None, path.with_name(path.name + ".results.json"))


def _fetch_url(url: str, max_bytes: int, timeout: float, cwd: Path) -> Fetched:
    _check_url(url)
    handlers: list = [_CheckedRedirects()]
    if is_loopback(urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))     # this machine: never through a proxy
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, headers={"User-Agent": "ib-data-agent-orders"})
    try:
        with opener.open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{url} is {int(length):,} bytes, over the {max_bytes:,}-byte limit for an order file")
            data = resp.read(max_bytes + 1)
    except FetchError:
        raise
    except urllib.error.HTTPError as e:
        raise FetchError(f"{url} answered HTTP {e.code} ({e.reason})") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise FetchError(f"{url} could not be fetched ({reason})") from None
    if len(data) > max_bytes:
        raise FetchError(f"{url} is over the {max_bytes:,}-byte limit for an order file")
    base = Path(urlsplit(url).path).name or "orders"
    return Fetched(data, url, url, cwd / f"{base}.results.json")
