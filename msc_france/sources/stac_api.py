"""STAC API backend (pystac-client): POST search, paging, timeouts and bounded retries."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pystac
import requests
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from urllib3.util.retry import Retry

from msc_france.errors import SourceError
from msc_france.sources.base import SearchQuery, Source

QUERY_CONFORMANCE = "https://api.stacspec.org/v1.0.0-rc.1/item-search#query"


@dataclass
class StacApiSource(Source):
    """Search a STAC API such as Planetary Computer.

    pystac-client follows ``next`` links, so results are paged past any per-request cap (Planetary
    Computer's is 1,000). Every HTTP call has a timeout and a bounded number of retries with
    exponential backoff on connection errors, 429 (honouring Retry-After) and 5xx.
    """

    @property
    def identity(self) -> str:
        """The API root URL."""
        return str(self.spec.url)

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
        io = StacApiIO(timeout=self.spec.timeout_s, max_retries=retry)
        try:
            return Client.open(str(self.spec.url), stac_io=io, timeout=self.spec.timeout_s)
        except (requests.RequestException, APIError, pystac.STACError) as e:
            raise SourceError(f"STAC API {self.spec.url} unreachable: {_short(e)}") from None

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
                return list(client.search(**kwargs).items())
            except (ValueError, requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError,
                    KeyError, TypeError) as e:
                last = e  # JSONDecodeError is a ValueError
            except APIError as e:
                # No status: a broken transfer (truncated body) that pystac-client wrapped.
                if getattr(e, "status_code", None) not in (None, 429, 500, 502, 503, 504):
                    raise SourceError(f"STAC search on {self.spec.url} ({q.collection}) failed: {_short(e)}") from None
                last = e  # urllib3's per-request retries ran out: retry the search as a whole
            except (requests.RequestException, pystac.STACError) as e:
                raise SourceError(f"STAC search on {self.spec.url} ({q.collection}) failed: {_short(e)}") from None
        raise SourceError(f"STAC search on {self.spec.url} ({q.collection}) failed "
                          f"{self.spec.max_retries + 1} times: {_short(last)}")


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
