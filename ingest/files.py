"""Source files: which names the parsers accept, MD5 (with NLM ``.md5`` sidecars), gzip detection."""

from __future__ import annotations

import gzip
import hashlib
import io
import re
from pathlib import Path
from typing import IO, cast

from pubmind.errors import BadSourceFile

XML_SUFFIXES = (".xml", ".xml.gz")
MEDLINE_SUFFIXES = (".txt", ".nbib", ".medline", ".txt.gz", ".nbib.gz")
SUFFIXES = XML_SUFFIXES + MEDLINE_SUFFIXES


def is_source_file(path: Path) -> bool:
    """True for names the parsers accept (by suffix)."""
    return path.name.lower().endswith(SUFFIXES)


def file_md5(path: str | Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_md5(path: str | Path) -> str:
    """MD5 of ``path``; checked against an NLM ``.md5`` sidecar (``MD5(name)= hex``) when there is one."""
    path = Path(path)
    digest = file_md5(path)
    side = path.with_name(path.name + ".md5")
    if side.exists():
        text = side.read_text(errors="replace").strip()
        m = re.fullmatch(r"(?:MD5\s*\((?P<name>[^)]*)\)\s*=\s*)?(?P<hex>[0-9a-fA-F]{32})(?:\s+\S+)?", text)
        if not m:
            raise BadSourceFile(str(side), f"not an MD5 sidecar (expected 'MD5({path.name})= <32 hex>'), "
                                           f"got {text[:80]!r}", line=1)
        if m["hex"].lower() != digest:
            raise BadSourceFile(str(path), f"MD5 mismatch: file has {digest}, {side.name} says "
                                           f"{m['hex'].lower()} (corrupt or partial download)")
    return digest


def open_binary(path: Path, data: bytes | None = None) -> IO[bytes]:
    """``path`` opened for reading bytes, decompressed on the fly if it is gzip (by magic number); with
    ``data`` (the file's bytes, read elsewhere), a stream over those bytes instead."""
    if data is not None:
        raw = io.BytesIO(data)
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) if data[:2] == b"\x1f\x8b" else raw
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], gzip.open(path, "rb"))  # GzipFile reads bytes; typeshed types it apart from IO
    return open(path, "rb")
