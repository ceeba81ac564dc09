"""URLs from catalogs and users: credentials redacted before printing, hrefs checked before reading.

Asset hrefs come from services and files the project does not control, and GDAL opens whatever
string it is given: ``/vsicurl/`` and other virtual file systems, inline VRT XML whose
``<SourceFilename>`` can name any local file, loopback and private addresses. :func:`check_href`
applies a source's policy before any href reaches GDAL.
"""

from __future__ import annotations

import ipaddress
import re
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


def _private_host(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_unspecified


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
    host = (parts.hostname or "").lower()
    if scheme in ("http", "https"):
        if not host:
            raise SourceError(f"refused asset href {redact(h)}: no host")
        if _private_host(host) and not private_ok:
            raise SourceError(f"refused asset href {redact(h)}: loopback or private address")
    if allowed_hosts is not None and host not in {a.lower() for a in allowed_hosts} and not any(
            host.endswith("." + a.lower()) for a in allowed_hosts):
        raise SourceError(f"refused asset href {redact(h)}: host '{host}' is not in the source's allowed_hosts")
    return h
