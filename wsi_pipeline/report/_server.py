"""``wsi-pipeline view``: the report's pages served from 127.0.0.1 with every deep-zoom level read from the slide
files on request (full resolution, nothing written). Standard library only.

Only these addresses answer: ``/`` (``/index.html``), ``/slides/<id>.html`` and ``/tiles/<id>_files/<level>/<col>_
<row>.jpeg`` for the slides of the prediction folder, and ``/assets/<file>`` inside the package's assets (no
``..``, no absolute path, no symlink out of it). Everything else is a 404. A client that goes away mid-response
costs its own request only.
"""

from __future__ import annotations

import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ._pyramid import DeepZoom
from ._report import ReportConfig, _fingerprint, _slide_file, load_results, render_index, render_slide, static_dir

__all__ = ["ViewServer", "make_server"]

log = logging.getLogger(__name__)

_TILE = re.compile(r"^/tiles/(?P<sid>[^/]+)_files/(?P<level>\d{1,3})/(?P<col>\d{1,7})_(?P<row>\d{1,7})\.jpeg$")
_PAGE = re.compile(r"^/slides/(?P<sid>[^/]+)\.html$")
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".png": "image/png",
    ".txt": "text/plain",
    ".svg": "image/svg+xml",
}
_DISCONNECTS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class ViewServer(ThreadingHTTPServer):
    """The view server of one prediction folder (``make_server`` builds it; ``serve_forever`` runs it)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, out_dir: Path, address: tuple[str, int], *, config: ReportConfig | None = None, static: Path | None = None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.config = config or ReportConfig()
        self.static = (static or static_dir()).resolve()
        self.results = {r["slide_id"]: r for r in load_results(self.out_dir)}
        self._zooms: dict[str, DeepZoom | None] = {}
        self._pages: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"

    def deepzoom(self, sid: str) -> DeepZoom | None:
        """The slide's full-resolution levels (opened once; None when its slide file is unavailable)."""
        with self._lock:
            if sid not in self._zooms:
                path, why = _slide_file(Path(self.results[sid]["store"]))
                zoom = None
                if path is not None:
                    from ..slide import Slide

                    slide = Slide(path).open()  # kept open while serving: tiles are read from it
                    zoom = DeepZoom(slide, tile_size=self.config.tile_size, overlap=self.config.overlap)
                else:
                    log.warning("view: %s has no pixels: %s", sid, why)
                self._zooms[sid] = zoom
            return self._zooms[sid]

    def page(self, sid: str) -> str:
        result = self.results[sid]
        key = _fingerprint(result)
        with self._lock:
            cached = self._pages.get(sid)
        if cached and cached[0] == key:
            return cached[1]
        zoom = self.deepzoom(sid)
        pyramid = None if zoom is None else {"width": zoom.width, "height": zoom.height, "downsample": 1.0}
        why = "" if zoom is not None else _slide_file(Path(result["store"]))[1]
        _, text = render_slide(result, pyramid, why, self.config, live=True)
        with self._lock:
            self._pages[sid] = (key, text)
        return text

    def index(self) -> str:
        results = list(self.results.values())
        return render_index(results, set(self.results), {})[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], _DISCONNECTS):
            return  # the browser cancelled a tile it no longer needs: nothing to report
        log.exception("view: error serving %s", client_address)

    def server_close(self) -> None:
        super().server_close()
        for zoom in self._zooms.values():
            if zoom is not None:
                zoom.slide.close()


class _Handler(BaseHTTPRequestHandler):
    server: ViewServer
    server_version = "wsi-pipeline-view"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("view: %s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "max-age=3600" if cache else "no-cache")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except _DISCONNECTS:
            self.close_connection = True

    def _not_found(self) -> None:
        self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def _asset(self, relative: str) -> Path | None:
        parts = relative.split("/")
        if not relative or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
            return None
        path = (self.server.static / relative).resolve()  # symlinks resolved: one pointing out is refused
        if not path.is_relative_to(self.server.static) or not path.is_file():
            return None
        return path

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = unquote(urlsplit(self.path).path)
        server = self.server
        if path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, server.index().encode(), "text/html; charset=utf-8")
        page = _PAGE.match(path)
        if page and page["sid"] in server.results:
            return self._send(HTTPStatus.OK, server.page(page["sid"]).encode(), "text/html; charset=utf-8")
        tile = _TILE.match(path)
        if tile and tile["sid"] in server.results:
            zoom = server.deepzoom(tile["sid"])
            if zoom is None:
                return self._not_found()
            try:
                data = zoom.tile_jpeg(int(tile["level"]), int(tile["col"]), int(tile["row"]), server.config.quality)
            except ValueError:
                return self._not_found()
            return self._send(HTTPStatus.OK, data, "image/jpeg", cache=True)
        if path.startswith("/assets/"):
            asset = self._asset(path.removeprefix("/assets/"))
            if asset is not None:
                kind = _TYPES.get(asset.suffix, "application/octet-stream")
                return self._send(HTTPStatus.OK, asset.read_bytes(), kind, cache=True)
        return self._not_found()


def make_server(
    out_dir: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ReportConfig | None = None,
    static: Path | None = None,
) -> ViewServer:
    """A ``ViewServer`` of the prediction folder ``out_dir`` bound to ``host:port`` (port 0: any free port).

    Raises ``MissingPrerequisiteError`` when the folder has no predictions; ``OSError`` when the port is taken.
    """
    from ..errors import MissingPrerequisiteError

    out_dir = Path(out_dir)
    server = ViewServer(out_dir, (host, port), config=config, static=static)
    if not server.results:
        server.server_close()
        raise MissingPrerequisiteError(
            f"{out_dir}: no predicted slides (predictions.csv and slides/<id>.json); run `wsi-pipeline predict MODEL "
            f"INPUTS --out {out_dir}` first"
        )
    return server
