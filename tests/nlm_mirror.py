"""A local stand-in for NLM's PubMed distribution (``https://ftp.ncbi.nlm.nih.gov/pubmed/``) on 127.0.0.1.

It serves a folder (``baseline/``, ``updatefiles/``) built in a temp dir from the real files in
``../shared/data``: folders as Apache-style HTML index pages like NLM's, files with HTTP Range support
(``bytes=N-``, answered 206). Tests script faults per file name: HTTP statuses for the next requests
(``fail``), a connection cut after N body bytes (``cut``), a delay before answering (``delay``), an answer held
until an event is set, at most ``hold_s`` seconds (``hold``); every request is logged with its Range header. Used by tests/test_ingest_sync.py and bench/sync.py.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


def md5_sidecar(path: Path, name: str | None = None) -> str:
    """NLM's sidecar text: ``MD5(pubmed26n0001.xml.gz)= <hex>``."""
    return f"MD5({name or path.name})= {hashlib.md5(path.read_bytes()).hexdigest()}\n"


def add_file(root: Path, folder: str, name: str, source: Path) -> Path:
    """Put ``source`` (a real file, linked, never copied into the repo) on the mirror as ``folder/name``,
    with its real ``.md5`` sidecar when the name is unchanged and one exists, else a computed one."""
    d = root / folder
    d.mkdir(parents=True, exist_ok=True)
    dest = d / name
    dest.unlink(missing_ok=True)
    os.symlink(source, dest)
    real = source.with_name(source.name + ".md5")
    side = d / (name + ".md5")
    side.unlink(missing_ok=True)
    side.write_text(real.read_text() if real.exists() and source.name == name else md5_sidecar(source, name))
    return dest


@dataclass
class Mirror:
    root: Path
    url: str = ""
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    fail: dict[str, collections.deque[int]] = field(default_factory=lambda: collections.defaultdict(collections.deque))
    cut: dict[str, int] = field(default_factory=dict)  # name -> body bytes sent before the connection drops (once)
    delay: dict[str, float] = field(default_factory=dict)  # name -> seconds before answering
    hold: dict[str, threading.Event] = field(default_factory=dict)  # name -> answered once set (or after hold_s)
    hold_s: float = 8.0  # bound of a hold: below the test preset's 10-s request timeout
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of the GETs of ``name`` (None: no Range)."""
        with self.lock:
            return [rng for path, rng in self.log if path.rsplit("/", 1)[-1] == name]

    def file_gets(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.log if p.endswith(".xml.gz")]


def _index_html(rel: str, folder: Path) -> bytes:
    """An index page in the format of NLM's (Apache) listings of /pubmed/baseline/."""
    rows = [f'<a href="/pubmed/">Parent Directory</a>{"":30}-   ']
    for p in sorted(folder.iterdir()):
        st = p.stat()
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(st.st_mtime))
        rows.append(f'<a href="{p.name}">{p.name}</a>{"":{max(1, 26 - len(p.name))}}{stamp}  {st.st_size:>6}  ')
    body = (f'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n  <title>Index of /{rel}'
            f'</title>\n </head>\n <body>\n<h1>Index of /{rel}</h1>\n<pre>Name{"":22}Last modified      Size  <hr>'
            + "\n".join(rows) + "\n<hr></pre>\n</body></html>\n")
    return body.encode()


def _handler(m: Mirror) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "text/html", extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            name = path.rstrip("/").rsplit("/", 1)[-1]
            rng = self.headers.get("Range")
            with m.lock:
                m.log.append((path, rng))
                status = m.fail[name].popleft() if m.fail.get(name) else None
                cut = m.cut.pop(name, None)
            if name in m.delay:
                time.sleep(m.delay[name])
            if name in m.hold:
                m.hold[name].wait(m.hold_s)
            if status is not None:
                self._send(status, b"<html><body>injected failure</body></html>", extra={"Retry-After": "0"})
                return
            rel = path.lstrip("/").removeprefix("pubmed/")
            if ".." in Path(rel).parts:
                self._send(403, b"forbidden")
            elif (m.root / rel).is_dir():
                self._send(200, _index_html(path.strip("/") + "/", m.root / rel))
            elif (m.root / rel).is_file():
                self._file((m.root / rel).read_bytes(), rng, cut)
            else:
                self._send(404, b"<html><body>404 Not Found</body></html>")

        def _file(self, data: bytes, rng: str | None, cut: int | None) -> None:
            start = 0
            if rng:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self._send(416, b"", extra={"Content-Range": f"bytes */{len(data)}"})
                    return
            body = data[start:]
            self.send_response(206 if rng else 200)
            self.send_header("Content-Type", "application/x-gzip")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Last-Modified", formatdate(usegmt=True))
            self.send_header("Accept-Ranges", "bytes")
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if cut is not None:  # the connection drops mid-body
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


class MirrorServer:
    """``with MirrorServer(root) as m:`` serves ``root`` as ``m.url`` (``http://127.0.0.1:PORT/pubmed/``)."""

    def __init__(self, root: Path) -> None:
        self.mirror = Mirror(root=root)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.mirror))
        self._server.daemon_threads = True
        self.mirror.url = f"http://127.0.0.1:{self._server.server_address[1]}/pubmed/"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> Mirror:
        self._thread.start()
        return self.mirror

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
