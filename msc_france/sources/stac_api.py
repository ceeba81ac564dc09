"""STAC API backend (pystac-client): POST search, paging, timeouts and bounded retries."""

from __future__ import annotations

import json
import time
from copy import deepcopy
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import pystac
import requests
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from requests import Request
from urllib3.util.retry import Retry

from msc_france.errors import SourceError
from msc_france.sources.base import SearchQuery, Source
from msc_france.urls import check_url, redact

MAX_REDIRECTS = 5
QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0-rc.1/item-search#query"


class SearchLimitError(SourceError):
    """A search exceeded a bound (deadline, pages, items) or looped: never retried."""


class BoundedStacIO(StacApiIO):
    """pystac-client I/O with bounds a hostile or broken server cannot escape.

    Each response must arrive whole within ``response_deadline_s`` (a server dripping one byte a
    second never trips a per-read timeout); the search as a whole within ``deadline_s`` and
    ``max_pages`` requests; and a request identical to an earlier one (a ``next`` link pointing
    back) is a loop.
    """

    def __init__(self, *args: Any, response_deadline_s: float, deadline_s: float, max_pages: int,
                 root: str = "", private_ok: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.response_deadline_s, self.deadline_s, self.max_pages = response_deadline_s, deadline_s, max_pages
        self.root, self.private_ok = root, private_ok
        self.reset()

    def reset(self) -> None:
        """Start counting for a new search."""
        self.started = time.monotonic()
        self.pages = 0
        self.seen: set[str] = set()

    def _send(self, req: Request) -> Any:
        """Send ``req``, following at most ``MAX_REDIRECTS`` redirects, each checked by the href
        policy before it is requested (the API's own host is trusted; links elsewhere are not).
        """
        url = req.url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                check_url(url, private_ok=self.private_ok, trusted=self.root or None)
            except SourceError as err:
                raise SearchLimitError(str(err)) from None
            req.url = url
            try:
                resp = self.session.send(self.session.prepare_request(req), timeout=self.timeout, stream=True,
                                         allow_redirects=False)
            except Exception as err:
                raise APIError(str(err)) from None
            if not resp.is_redirect:
                return resp
            url = urljoin(url, resp.headers["location"])
            resp.close()
            if resp.status_code == 303:
                req.method, req.json, req.data = "GET", None, []
        raise SearchLimitError(f"STAC API {redact(str(req.url))} redirected more than {MAX_REDIRECTS} times")

    def request(self, href: str, method: str | None = None, headers: dict[str, str] | None = None,
                parameters: dict[str, Any] | None = None) -> str:
        """One request, read in chunks against the response and search deadlines."""
        method = (method or "GET").upper()
        key = json.dumps([method, href, parameters], sort_keys=True, default=str)
        if key in self.seen:
            raise SearchLimitError(f"STAC API {redact(href)} returned a next link already followed (a paging loop)")
        self.seen.add(key)
        self.pages += 1
        if self.pages > self.max_pages:
            raise SearchLimitError(f"STAC search gave more than {self.max_pages} pages (source max_pages)")
        body = {"json": parameters} if method in ("POST", "PUT", "PATCH") else {"params": deepcopy(parameters or {})}
        start = time.monotonic()
        resp = self._send(Request(method=method, url=href, headers=headers, **body))
        with resp:
            chunks = []
            while True:
                # read1 returns what has arrived (iter_content waits for a full chunk or the end,
                # which a dripping server stretches without limit).
                try:
                    chunk = resp.raw.read1(65536)
                except Exception as err:  # broken transfers: retried like any failed request
                    raise APIError(str(err)) from None
                if not chunk:
                    break
                chunks.append(chunk)
                now = time.monotonic()
                if now - start > self.response_deadline_s:
                    raise SearchLimitError(f"STAC API {redact(href)} took over {self.response_deadline_s:g} s for "
                                           "one response (source response_deadline_s)")
                if now - self.started > self.deadline_s:
                    raise SearchLimitError(f"STAC search took over {self.deadline_s:g} s (source search_deadline_s)")
            content = b"".join(chunks)
        if not 200 <= resp.status_code < 300:
            raise APIError(f"HTTP {resp.status_code}: {content[:200].decode('utf-8', 'replace')}")
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError as err:
            raise APIError(str(err)) from None


@dataclass
class StacApiSource(Source):
    """Search a STAC API such as Planetary Computer.

    pystac-client follows ``next`` links, so results are paged past any per-request cap (Planetary
    Computer's is 1,000). Every HTTP call has a timeout and a bounded number of retries with
    exponential backoff on connection errors, 429 (honouring Retry-After) and 5xx.
    """

    @property
    def identity(self) -> str:
        """The API root URL (credentials removed: it names cache files and appears in messages)."""
        return redact(str(self.spec.url))

    def _client(self) -> Client:
        retry = Retry(
            total=self.spec.max_retries,
            connect=self.spec.max_retries,
            read=self.spec.max_retries,
            backoff_factor=0.5,
            status_forcelist=(429, 500, 502, 503, 504),
            allowed_methods=None,  # POST searches are idempotent reads: retry them too
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        io = BoundedStacIO(timeout=self.spec.timeout_s, max_retries=retry,
                           response_deadline_s=self.spec.response_deadline_s, deadline_s=self.spec.search_deadline_s,
                           max_pages=self.spec.max_pages, root=str(self.spec.url),
                           private_ok=self.spec.allow_private_hosts)
        try:
            return Client.open(str(self.spec.url), stac_io=io, timeout=self.spec.timeout_s)
        except (requests.RequestException, APIError, pystac.STACError) as e:
            raise SourceError(f"STAC API {redact(str(self.spec.url))} unreachable: {_short(e)}") from None

    def _search(self, q: SearchQuery) -> list[pystac.Item]:
        client = self._client()
        kwargs: dict = dict(
            collections=[q.collection],
            bbox=list(q.bbox),
            datetime=q.datetime_range,
            limit=self.spec.page_size,
            method="POST",
        )
        query = {k: {"eq": v} for k, v in q.properties}
        if q.max_cloud_cover is not None and q.cloud_cover_property:
            query[q.cloud_cover_property] = {"lte": q.max_cloud_cover}
        if query and client.conforms_to("QUERY"):
            kwargs["query"] = query  # servers without the extension are filtered client-side
        # Status-level faults (429, 5xx, connection) are retried by urllib3 inside each request;
        # a truncated or garbled page is retried here, the whole search again, a bounded number of times.
        last: Exception | None = None
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                time.sleep(0.5 * 2 ** (attempt - 1))
            try:
                return self._collect(client, kwargs)
            except (ValueError, requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                    KeyError, TypeError) as e:
                last = e  # JSONDecodeError is a ValueError
            except APIError as e:
                # No status: a broken transfer (truncated body) that pystac-client wrapped.
                if getattr(e, "status_code", None) not in (None, 429, 500, 502, 503, 504):
                    raise SourceError(f"STAC search on {self._url} ({q.collection}) failed: {_short(e)}") from None
                last = e  # urllib3's per-request retries ran out: retry the search as a whole
            except (requests.RequestException, pystac.STACError) as e:
                raise SourceError(f"STAC search on {self._url} ({q.collection}) failed: {_short(e)}") from None
        raise SourceError(f"STAC search on {self._url} ({q.collection}) failed "
                          f"{self.spec.max_retries + 1} times: {_short(last) if last else 'no answer'}")

    @property
    def _url(self) -> str:
        return redact(str(self.spec.url))

    def _collect(self, client: Client, kwargs: dict[str, Any]) -> list[pystac.Item]:
        """All pages of one search, within the source's bounds."""
        io = client._stac_io
        if isinstance(io, BoundedStacIO):
            io.reset()
        items: list[pystac.Item] = []
        for page in client.search(**kwargs).pages_as_dicts():
            feats = page.get("features") if isinstance(page, dict) else None
            if not isinstance(feats, list):
                raise SourceError(f"STAC search on {self._url}: a page has no 'features' list")
            for f in feats:
                if not isinstance(f, dict):
                    raise SourceError(f"STAC search on {self._url}: a feature is not an object")
                items.append(pystac.Item.from_dict(f, preserve_dict=False))
            if len(items) > self.spec.max_items:
                raise SearchLimitError(f"STAC search on {self._url} gave more than {self.spec.max_items} items "
                                       "(source max_items): narrow the region or the time window")
        return items


def _short(e: Exception) -> str:
    """A readable one-line cause (requests' messages nest the whole retry history)."""
    text = str(e)
    if isinstance(e, requests.Timeout) or "Read timed out" in text:
        return "timed out"
    if "NameResolution" in text or "Name or service not known" in text:
        return "cannot resolve host name (no network?)"
    if "Connection refused" in text:
        return "connection refused"
    if isinstance(e, requests.ConnectionError) or "Max retries exceeded" in text:
        return "connection failed after retries"
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]
