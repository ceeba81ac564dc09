"""Lazy asset signing: hrefs stay unsigned in items and plans and are signed just before a read.

Planetary Computer SAS tokens last about 45 minutes while a build can last hours, so a token is
fetched when a read needs it, cached until shortly before its expiry, and dropped and fetched
again when a read answers HTTP 403. Tokens come from the Planetary Computer SAS endpoint named by
the ``planetary-computer`` library's settings (``PC_SDK_SAS_URL``, ``PC_SDK_SUBSCRIPTION_KEY``),
with our own timeout and bounded retries: the library's defaults stall for minutes offline.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Protocol
from urllib.parse import urlparse

import requests
from planetary_computer.sas import SASToken
from planetary_computer.settings import Settings
from planetary_computer.utils import parse_blob_url

from msc_france.errors import SourceError

BLOB_DOMAIN = ".blob.core.windows.net"


class Signer(Protocol):
    """Turns a stored (unsigned) href into one that can be read right now."""

    def sign(self, href: str) -> str:
        """Return a readable href (may fetch a token)."""
        ...

    def refresh(self, href: str) -> str:
        """Drop any cached credential for ``href`` and sign it again (after an HTTP 403)."""
        ...


class NoSigner:
    """For public or local assets."""

    def sign(self, href: str) -> str:
        """Return ``href`` unchanged."""
        return href

    def refresh(self, href: str) -> str:
        """Return ``href`` unchanged."""
        return href


class PlanetaryComputerSigner:
    """SAS-token signing for Azure blob hrefs, with a per-container token cache.

    Args:
        timeout_s: per-request timeout for the token endpoint.
        max_retries: retries after the first attempt (HTTP 429/5xx and connection errors).
        backoff_s: base of the exponential backoff between retries.
        min_ttl_s: a cached token closer than this to expiry is renewed before use.
    """

    def __init__(
        self, timeout_s: float = 10.0, max_retries: int = 3, backoff_s: float = 0.5, min_ttl_s: float = 120.0
    ) -> None:
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.min_ttl_s = min_ttl_s
        self._tokens: dict[tuple[str, str], SASToken] = {}
        self._lock = threading.Lock()
        self.token_requests = 0

    @staticmethod
    def needs_signing(href: str) -> bool:
        """Only Azure blob-storage hrefs carry SAS tokens."""
        return urlparse(href).netloc.endswith(BLOB_DOMAIN)

    def _fetch(self, account: str, container: str) -> SASToken:
        settings = Settings.get()
        url = f"{settings.sas_url}/{account}/{container}"
        headers = {"Ocp-Apim-Subscription-Key": settings.subscription_key} if settings.subscription_key else None
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            self.token_requests += 1
            try:
                r = requests.get(url, headers=headers, timeout=self.timeout_s)
            except requests.RequestException as e:
                last = e
                continue
            if r.status_code in (429, 500, 502, 503, 504):
                last = SourceError(f"SAS token endpoint answered HTTP {r.status_code}")
                continue
            if r.status_code != 200:
                raise SourceError(f"SAS token endpoint {url} answered HTTP {r.status_code}")
            try:
                return SASToken(**r.json())
            except Exception:
                raise SourceError(f"SAS token endpoint {url} returned an unreadable token") from None
        raise SourceError(
            f"could not get a SAS token for {account}/{container} after {self.max_retries + 1} attempts: {last}"
        )

    def _token(self, account: str, container: str) -> SASToken:
        with self._lock:
            tok = self._tokens.get((account, container))
            if tok is None or tok.ttl() < self.min_ttl_s:
                tok = self._fetch(account, container)
                self._tokens[(account, container)] = tok
            return tok

    def sign(self, href: str) -> str:
        """Sign an Azure blob href with a (cached) SAS token; other hrefs pass unchanged."""
        if not self.needs_signing(href):
            return href
        base = href.split("?", 1)[0]
        account, container = parse_blob_url(urlparse(base))
        return self._token(account, container).sign(base).href

    def refresh(self, href: str) -> str:
        """Forget the token of ``href``'s container and sign again."""
        if self.needs_signing(href):
            account, container = parse_blob_url(urlparse(href.split("?", 1)[0]))
            with self._lock:
                self._tokens.pop((account, container), None)
        return self.sign(href)


@functools.cache
def make_signer(kind: str, timeout_s: float = 10.0, max_retries: int = 3) -> Signer:
    """The signer for a source's ``signing`` setting: one per process and setting, so its token
    cache outlives a chip (a national build asks for one token per container and lifetime).
    """
    if kind == "planetary-computer":
        return PlanetaryComputerSigner(timeout_s=timeout_s, max_retries=max_retries)
    return NoSigner()
