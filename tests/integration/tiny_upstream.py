"""A tiny scripted upstream for tests whose upstream must answer what no mock answers (Azure's content
filter, OpenRouter's stream comments): a threaded HTTP server in the test process that records each
request and answers with what ``answer(path, headers, body)`` returns."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Callable
from typing import Any

from .helpers import HOST

__all__ = ["Answer", "TinyUpstream"]

#: (path, lower-case headers, body) -> (status, content type, body)
Answer = Callable[[str, dict[str, str], bytes], tuple[int, str, bytes]]


class TinyUpstream:
    """Started on construction; ``seen`` holds (path, headers, body) of every request; ``close`` stops it."""

    def __init__(self, answer: Answer) -> None:
        seen: list[tuple[str, dict[str, str], bytes]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen.append((self.path, headers, raw))
                status, ctype, out = answer(self.path, headers, raw)
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST  # a GET has no body: answered the same way (an image server)

        self._server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
