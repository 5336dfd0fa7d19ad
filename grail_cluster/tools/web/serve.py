"""``serve``: a local HTTP server for a generated viewer (127.0.0.1 only).

The viewer fetches ``manifest.json``, so it needs HTTP (not ``file://``). This is the standard
library's threading server with a handler rooted at the site directory that

- follows the ``vis/`` symlinks (they point into the motion library),
- answers ``Range: bytes=...`` requests with ``206 Partial Content`` (Chromium seeks and streams
  ``<video>`` with ranges), ``416`` when unsatisfiable,
- sends ``Cache-Control: no-store`` for ``manifest.json`` and ``nosniff`` everywhere,
- speaks HTTP/1.1 keep-alive and stays quiet about clients that hang up mid-video.

The directory is looked up by path on every request, so a site regenerated in place (atomic
rename) is served without a restart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from grail_cluster.core.errors import EXIT_OK, ConfigError

HOST = "127.0.0.1"
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 1 << 16


class SiteHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    quiet = True
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".js": "text/javascript", ".mp4": "video/mp4",
                      ".json": "application/json", ".css": "text/css", ".html": "text/html; charset=utf-8"}

    def __init__(self, *args: Any, **kw: Any) -> None:
        self._range: tuple[int, int] | None = None
        super().__init__(*args, **kw)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if not self.quiet:
            super().log_message(format, *args)

    def end_headers(self) -> None:
        self.send_header("X-Content-Type-Options", "nosniff")
        if getattr(self, "path", "").split("?", 1)[0].endswith("/manifest.json"):  # no path: a bad request line
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def send_head(self):  # noqa: C901 - one place for the file/range logic
        self._range = None
        path = self.translate_path(self.path)
        if os.path.isdir(path) or "Range" not in self.headers:
            f = super().send_head()
            return f
        m = _RANGE.match(self.headers["Range"].strip())
        if not m or (not m.group(1) and not m.group(2)):
            return super().send_head()  # multi-range or malformed: ignore the header (RFC 9110 allows it)
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to do_GET, which closes it
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            size = os.fstat(f.fileno()).st_size
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, size - int(m.group(2))), size - 1
            if start >= size or start > end:
                f.close()
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self.send_header("Last-Modified", self.date_time_string(int(os.fstat(f.fileno()).st_mtime)))
            self.end_headers()
            self._range = (start, end - start + 1)
            return f
        except BaseException:
            f.close()
            raise

    def send_response(self, code: int, message: str | None = None) -> None:
        super().send_response(code, message)
        if code == HTTPStatus.OK:
            self.send_header("Accept-Ranges", "bytes")

    def copyfile(self, source, outputfile) -> None:
        if self._range is None:
            return super().copyfile(source, outputfile)
        start, left = self._range
        source.seek(start)
        while left > 0:
            block = source.read(min(_CHUNK, left))
            if not block:
                break
            outputfile.write(block)
            left -= len(block)


class SiteServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"

    def handle_error(self, request, client_address) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return  # the browser dropped a video request (seek, scroll away): normal
        super().handle_error(request, client_address)


def check_site(directory: str | Path) -> Path:
    site = Path(directory).expanduser().resolve()
    if not site.is_dir():
        raise ConfigError("no such directory", path=site, fix="pass the --output dir of `grail-cluster web`")
    if not (site / "manifest.json").is_file():
        raise ConfigError("not a viewer site: there is no manifest.json", path=site,
                          fix="generate it first: grail-cluster web --motion_lib LIB --output DIR")
    return site


def make_server(directory: str | Path, port: int = 0, *, quiet: bool = True) -> SiteServer:
    """A server for ``directory`` bound to 127.0.0.1:``port`` (0 = any free port); not started."""
    site = check_site(directory)
    handler = partial(type("Handler", (SiteHandler,), {"quiet": quiet}), directory=str(site))
    try:
        return SiteServer((HOST, int(port)), handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}",
                          fix="pick another --port (0 = any free port)") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    server = make_server(args.directory, args.port, quiet=not args.verbose)
    site = check_site(args.directory)
    if args.json:
        sys.stdout.write(json.dumps({"url": server.url, "port": server.server_address[1], "directory": str(site)}) + "\n")
    else:
        sys.stdout.write(f"serving {site} at {server.url} (127.0.0.1 only; Ctrl-C stops)\n")
    sys.stdout.flush()

    def _stop(signum, frame):  # SIGTERM ends it like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        if not args.json:
            sys.stdout.write("stopped\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    return EXIT_OK


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand (sets ``func``)."""
    p = subparsers.add_parser(
        "serve", help="serve a generated web viewer on 127.0.0.1 (Ctrl-C stops)",
        description="Serve the directory written by `grail-cluster web` over HTTP on 127.0.0.1 only, following "
                    "the vis/ symlinks, with HTTP Range support for the videos. Runs until Ctrl-C.")
    p.add_argument("directory", help="the site dir (holds manifest.json)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 = any free port)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")
    p.add_argument("--json", action="store_true", help="print {url, port, directory} as one JSON line")
    p.set_defaults(func=_cmd_serve)
    return p
