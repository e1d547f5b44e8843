"""One exception hierarchy for all of pubmind; the server maps it to HTTP in one place
(``server/errors.py``) and the CLI to exit codes. Messages name the parameter/file and the bad value."""

from __future__ import annotations


class PubmindError(Exception):
    """Base class. ``status`` is the HTTP status the server answers with; ``code`` a stable slug."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(PubmindError):
    status, code = 500, "config_error"


class InvalidInput(PubmindError):
    """A bad request parameter or value (400)."""

    status, code = 400, "invalid_request_error"


class BadSourceFile(PubmindError):
    """An input file (XML, MEDLINE, E-utilities response) that cannot be ingested."""

    status, code = 422, "bad_source_file"

    def __init__(self, path: str, message: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {message}")
        self.path, self.line = path, line


class UpstreamError(PubmindError):
    """A remote service (E-utilities, vLLM) failed or answered with an error."""

    status, code = 502, "upstream_error"


class ServiceUnavailable(PubmindError):
    """A dependency (vLLM, the index) is down or timed out (503)."""

    status, code = 503, "service_unavailable"


class NotFound(PubmindError):
    status, code = 404, "not_found"


class Conflict(PubmindError):
    status, code = 409, "conflict"


class Unauthorized(PubmindError):
    status, code = 401, "invalid_api_key"


class Forbidden(PubmindError):
    status, code = 403, "permission_denied"


class RateLimited(PubmindError):
    status, code = 429, "rate_limit_exceeded"


class IndexMismatch(PubmindError):
    """The index on disk was built with other settings (embedder, dimension, normalisation)."""

    status, code = 500, "index_mismatch"


class WorkerFailed(PubmindError):
    """A helper process (a parse process of the ingest) ended abruptly: killed, out of memory, or it could
    not start."""

    status, code = 500, "worker_failed"
