"""Connection hygiene under uvicorn: a client gets a bounded time to send a request's headers (slowloris, and
connections opened and left idle, are closed), the process may open as many descriptors as the system allows,
and the server stops taking new work well before it would run out of them.

uvicorn arms its keep-alive timer only after a response and disarms it on any byte received, so a connection that
never completes a request holds its descriptor forever; the protocol below adds the missing timer. The body's own
deadline is kept by the request guard (core.serve.app.Guard), which reads every body whole."""
from __future__ import annotations

import logging

log = logging.getLogger("mlxq.serve")
RESERVED_DESCRIPTORS = 64  # kept for model files, logs and the engines' own use


def guarded_protocol(header_timeout_s: float):
    """uvicorn's httptools protocol with a header deadline: from the connection's start, and again after each
    response, a request's headers must arrive complete within `header_timeout_s`, else the connection is closed.
    None where httptools is missing (uvicorn's default protocol is used, without the deadline)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        log.warning("httptools is not installed: connections have no header deadline")
        return None

    class HeaderDeadline(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._deadline = None
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if getattr(self, "_deadline", None) is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            if not self.transport.is_closing():
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline


def raise_descriptor_limit() -> int:
    """Raise the soft limit on open files to the hard one; returns the limit now in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(descriptor_limit: int) -> int:
    """Connections (and requests) taken at once: beyond it new requests get 503, so descriptors never run out."""
    return max(16, descriptor_limit - RESERVED_DESCRIPTORS)
