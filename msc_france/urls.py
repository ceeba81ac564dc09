"""URLs from catalogs and users: credentials redacted before printing, hrefs checked before reading.

Asset hrefs come from services and files the project does not control, and GDAL opens whatever
string it is given: ``/vsicurl/`` and other virtual file systems, inline VRT XML whose
``<SourceFilename>`` can name any local file, loopback and private addresses. :func:`check_href`
applies a source's policy before any href reaches GDAL.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from msc_france.errors import SourceError

#: Query parameters that carry credentials (SAS tokens, API keys, signatures).
SECRET_PARAMS = re.compile(r"^(sig|signature|se|sv|sp|sr|st|skoid|sktid|skt|ske|sks|skv|subscription-key|"
                           r"api[-_]?key|access[-_]?token|token|x-amz-signature|x-amz-credential|"
                           r"x-amz-security-token|x-goog-signature|key|password|secret)$", re.IGNORECASE)
REMOTE_SCHEMES = {"http", "https", "s3", "gs", "az", "abfs", "abfss"}


def redact(url: str) -> str:
    """``url`` with any user:password and credential-bearing query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = [(k, "***" if SECRET_PARAMS.match(k) else v) for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def host_addresses(host: str, resolve: bool = True) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses a URL's host reaches, parsed the way curl and the C library parse them.

    IPv4 in every form ``inet_aton`` accepts (``127.1``, ``2130706433``, ``0x7f000001``,
    ``0177.0.0.1``), IPv6 (brackets stripped, IPv4-mapped forms unwrapped), trailing dots removed;
    other names resolved with ``getaddrinfo`` when ``resolve`` (an unresolvable name reaches
    nothing and gives ``[]``).
    """
    h = host.strip().strip("[]").rstrip(".").lower()
    if "%" in h:  # an IPv6 zone id: the address is what precedes it
        h = h.split("%", 1)[0]
    try:
        ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [ipaddress.ip_address(h)]
    except ValueError:
        try:
            ips = [ipaddress.IPv4Address(socket.inet_aton(h))]
        except OSError:
            ips = list(_resolved(h)) if resolve else []
    return [ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip for ip in ips]


@functools.lru_cache(maxsize=1024)
def _resolved(name: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    try:
        infos = socket.getaddrinfo(name, None)
    except (OSError, UnicodeError):
        return ()
    return tuple(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]) for i in infos)


def private_host(host: str, resolve: bool = True) -> bool:
    """Whether ``host`` is, or resolves to, an address that is not public: loopback, private,
    link-local (cloud metadata services), shared, reserved, unspecified or multicast; and
    ``localhost`` names in any spelling.
    """
    h = host.strip().strip("[]").rstrip(".").lower()
    if h in ("localhost", "localhost.localdomain") or h.endswith(".localhost"):
        return True
    return any(not ip.is_global or ip.is_multicast for ip in host_addresses(h, resolve))


def check_url(url: str, *, private_ok: bool = False, trusted: str | None = None) -> str:
    """A remote URL the project is about to open (a catalog link, a child catalog, a page, a
    redirect), or a SourceError.

    Args:
        url: the URL.
        private_ok: loopback and private addresses allowed (the source's ``allow_private_hosts``).
        trusted: a URL the user configured (an API root, a catalog): its own host is allowed.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        raise SourceError(f"refused link {redact(url)}: not a remote URL ({', '.join(sorted(REMOTE_SCHEMES))})")
    host = (parts.hostname or "").rstrip(".").lower()
    if trusted is not None and host == (urlsplit(trusted).hostname or "").rstrip(".").lower():
        return url
    if scheme in ("http", "https") and not private_ok and (not host or private_host(host)):
        raise SourceError(f"refused link {redact(url)}: loopback or private address")
    return url


def check_href(href: str, *, local_ok: bool, allowed_hosts: list[str] | None = None, private_ok: bool = False) -> str:
    """The href to read, or a SourceError saying which rule it breaks.

    Args:
        href: the asset href from an item.
        local_ok: local paths allowed (only for local static catalogs and the demo world).
        allowed_hosts: when given, the only hosts remote hrefs may name.
        private_ok: loopback and private addresses allowed (tests and local servers only).
    """
    h = href.strip()
    if h.startswith("<") or "<VRTDataset" in h or "<" in h[:64]:
        raise SourceError(f"refused asset href: inline XML ({h[:40]}...)")
    if h.lower().startswith("/vsi") or "/vsi" in h.lower()[:12]:
        raise SourceError(f"refused asset href {redact(h)}: GDAL virtual file systems (/vsi*) are not accepted")
    parts = urlsplit(h)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and h[1:2] == ":"):  # a path (or a Windows drive)
        if not local_ok:
            raise SourceError(f"refused asset href {h}: local paths only come from local catalogs")
        # Relative paths were resolved against their catalog file when it was loaded (sources/static.py).
        return str(Path(parts.path if scheme == "file" else h))
    if scheme not in REMOTE_SCHEMES:
        raise SourceError(f"refused asset href {redact(h)}: scheme '{scheme}' is not one of "
                          f"{', '.join(sorted(REMOTE_SCHEMES))}")
    host = (parts.hostname or "").rstrip(".").lower()
    if scheme in ("http", "https"):
        if not host:
            raise SourceError(f"refused asset href {redact(h)}: no host")
        if not private_ok and private_host(host):
            raise SourceError(f"refused asset href {redact(h)}: loopback or private address")
    if allowed_hosts is not None and host not in {a.lower() for a in allowed_hosts} and not any(
            host.endswith("." + a.lower()) for a in allowed_hosts):
        raise SourceError(f"refused asset href {redact(h)}: host '{host}' is not in the source's allowed_hosts")
    return h
