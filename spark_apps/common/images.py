"""Getting cover images: local files or HTTP(S) URLs, with timeouts, bounded retries and a
reason for every failure. No Spark, no torch: Pillow and the standard library only.

An image comes from, in this order:

1. the row's ``image`` value: an ``http(s)://`` URL, a ``file://`` URI or a path (a relative
   path is taken inside ``images_dir``);
2. the row's ``cover_id``: ``<images_dir>/<cover_id>.<ext>`` (also ``<cover_id>-M.<ext>``,
   as Open Library names its sizes) when ``images_dir`` is set, else ``url_template`` with
   ``{cover_id}`` filled in (Open Library's covers service by default).

A failure never raises out of :meth:`ImageFetcher.fetch_all`: the row gets ``error`` =
``"<reason>: <detail>"`` with one of :data:`REASONS`.
"""

import hashlib
import io
import math
import os
import random
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, url2pathname, urlopen

#: ``?default=false``: the service answers 404 for an unknown cover instead of a blank image.
OPEN_LIBRARY_COVERS = "https://covers.openlibrary.org/b/id/{cover_id}-M.jpg?default=false"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif")
SIZE_SUFFIXES = ("", "-M", "-L", "-S")
USER_AGENT = "spindle-embed-images/0.1 (+https://github.com/spindle; batch cover embedding)"
MAX_IMAGE_BYTES = 20 * 1024 * 1024

#: Why an image could not be embedded (the part of ``error`` before the colon).
REASONS = (
    "no_source",  # neither an image value nor a cover id (or no folder/template for it)
    "not_found",  # no such file; HTTP 404/410
    "http_error",  # any other HTTP status
    "timeout",  # connect or read timeout, after the retries
    "unreachable",  # connection refused/reset, DNS failure, after the retries
    "too_large",  # more than max_bytes
    "empty",  # zero bytes
    "decode_error",  # not an image Pillow can read, or truncated
    "read_error",  # a local file that exists but cannot be read
)
_RETRY_STATUS = frozenset([408, 425, 429, 500, 502, 503, 504])


class ImageError(Exception):
    def __init__(self, reason, detail):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = str(detail)

    def message(self):
        return f"{self.reason}: {self.detail}"


class Fetched:
    """One row's outcome: ``data`` (bytes) and ``sha256``, or ``error``."""

    __slots__ = ("data", "error", "sha256", "source")

    def __init__(self, source, data=None, error=None):
        self.source = source
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest() if data is not None else None
        self.error = error


def is_url(value):
    return value.startswith(("http://", "https://"))


def _missing(value):
    """None, NaN (pandas' null for a float column) or blank."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return not str(value).strip()


def cover_key(cover_id):
    """``12345`` for 12345, 12345.0 (a pandas float column) or "12345"."""
    if isinstance(cover_id, float) and cover_id.is_integer():
        cover_id = int(cover_id)
    return str(cover_id).strip()


def decode(data):
    """An RGB ``PIL.Image`` fully decoded from ``data``; :class:`ImageError` ``decode_error``
    for anything Pillow cannot read (not an image, truncated, a decompression bomb)."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()  # decode now: a truncated file fails here, not later in the processor
        return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for bad input
        raise ImageError("decode_error", f"{type(err).__name__}: {err}")


class ImageFetcher:
    """Reads or downloads images for rows; picklable (plain settings), so a pandas UDF can
    close over one. ``fetch_all`` runs ``threads`` fetches at once: downloads wait on the
    network, not on the CPU."""

    def __init__(
        self,
        images_dir=None,
        url_template=OPEN_LIBRARY_COVERS,
        timeout=10.0,
        retries=2,
        backoff=0.5,
        threads=8,
        max_bytes=MAX_IMAGE_BYTES,
        user_agent=USER_AGENT,
        joined_dir=None,
    ):
        """``joined_dir``: a folder Spark has read and joined to the rows (``contents`` of
        :meth:`fetch_all`); only named in messages."""
        self.images_dir = images_dir
        self.joined_dir = joined_dir
        self.url_template = url_template
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = max(0.0, float(backoff))
        self.threads = max(1, int(threads))
        self.max_bytes = int(max_bytes)
        self.user_agent = user_agent

    # ------------------------------------------------------------------ where from
    def source(self, cover_id, image):
        """The URL or path of a row's image; :class:`ImageError` ``no_source``."""
        if not _missing(image):
            image = str(image).strip()
            if is_url(image):
                return image
            if image.startswith("file://"):
                return url2pathname(urlsplit(image).path)
            if self.images_dir and not os.path.isabs(image):
                return os.path.join(self.images_dir, image)
            return image
        if not _missing(cover_id):
            key = cover_key(cover_id)
            if self.images_dir:
                return self._cover_file(key)
            if self.url_template:
                return self.url_template.format(cover_id=key)
            raise ImageError("no_source", f"cover id {key} but neither an images folder nor a URL template")
        raise ImageError("no_source", "the row has neither an image nor a cover id")

    def _cover_file(self, key):
        for suffix in SIZE_SUFFIXES:
            for ext in IMAGE_EXTENSIONS:
                for name in (key + suffix + ext, key + suffix + ext.upper()):
                    path = os.path.join(self.images_dir, name)
                    if os.path.isfile(path):
                        return path
        return os.path.join(self.images_dir, key + ".jpg")  # reported as not_found by read

    # ------------------------------------------------------------------ fetch
    def fetch(self, cover_id, image):
        """``Fetched`` for one row; never raises."""
        source = None
        try:
            source = self.source(cover_id, image)
            data = self._download(source) if is_url(source) else self._read(source)
            if not data:
                raise ImageError("empty", f"0 bytes from {source}")
            return Fetched(source, data)
        except ImageError as err:
            return Fetched(source, error=err.message())
        except Exception as err:  # noqa: BLE001 - one bad row must not fail the task
            return Fetched(source, error=ImageError("read_error", repr(err)).message())

    def joined(self, cover_id, image, content):
        """``Fetched`` of a row whose bytes Spark joined from ``joined_dir`` (None: no file)."""
        what = image if not _missing(image) else cover_id
        source = "{}/{}".format(str(self.joined_dir).rstrip("/"), what)
        if content is None:
            return Fetched(
                source, error=ImageError("not_found", f"no file for {what} under {self.joined_dir}").message()
            )
        if not content:
            return Fetched(source, error=ImageError("empty", f"0 bytes: {source}").message())
        if len(content) > self.max_bytes:
            return Fetched(
                source,
                error=ImageError("too_large", f"{source} has {len(content)} bytes (limit {self.max_bytes})").message(),
            )
        return Fetched(source, bytes(content))

    def fetch_all(self, cover_ids, images, contents=None):
        """``Fetched`` per row, in order; ``contents``: bytes Spark already read (or None)."""
        if contents is not None:
            return [self.joined(c, i, b) for c, i, b in zip(cover_ids, images, contents)]
        rows = list(zip(cover_ids, images))
        if self.threads == 1 or len(rows) <= 1:
            return [self.fetch(c, i) for c, i in rows]
        with ThreadPoolExecutor(max_workers=min(self.threads, len(rows))) as pool:
            return list(pool.map(lambda row: self.fetch(*row), rows))

    def _read(self, path):
        try:
            size = os.path.getsize(path)
        except OSError:
            raise ImageError("not_found", f"no file {path}")
        if size > self.max_bytes:
            raise ImageError("too_large", f"{path} has {size} bytes (limit {self.max_bytes})")
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as err:
            raise ImageError("read_error", f"{path}: {err}")

    def _download(self, url):
        """GET with a timeout; retries (``retries`` more attempts, exponential backoff with
        jitter) on timeouts, connection errors and 408/429/5xx, never on other 4xx."""
        attempt = 0
        while True:
            try:
                return self._get(url)
            except ImageError as err:
                retryable = err.reason in ("timeout", "unreachable") or getattr(err, "status", None) in _RETRY_STATUS
                if not retryable or attempt >= self.retries:
                    if attempt:
                        err.detail += f" (after {attempt + 1} attempts)"
                    raise
            delay = self.backoff * (2**attempt)
            time.sleep(delay * (0.5 + random.random() / 2))
            attempt += 1

    def _get(self, url):
        request = Request(url, headers={"User-Agent": self.user_agent, "Accept": "image/*"})
        try:
            with urlopen(request, timeout=self.timeout) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise ImageError("too_large", f"{url} declares {declared} bytes (limit {self.max_bytes})")
                data = response.read(self.max_bytes + 1)
        except HTTPError as err:
            error = ImageError("not_found" if err.code in (404, 410) else "http_error", f"HTTP {err.code} from {url}")
            error.status = err.code
            raise error
        except (socket.timeout, TimeoutError) as err:
            raise ImageError("timeout", f"{url} after {self.timeout:g} s: {err}")
        except URLError as err:
            if isinstance(err.reason, (socket.timeout, TimeoutError)):
                raise ImageError("timeout", f"{url} after {self.timeout:g} s")
            raise ImageError("unreachable", f"{url}: {err.reason}")
        except (ConnectionError, OSError) as err:  # reset mid-body, bad status line, ...
            raise ImageError("unreachable", f"{url}: {err}")
        if len(data) > self.max_bytes:
            raise ImageError("too_large", f"{url} sent more than {self.max_bytes} bytes")
        return data


def reason_of(error):
    """``"not_found"`` of ``"not_found: no file ..."``."""
    return error.split(":", 1)[0] if error else None
