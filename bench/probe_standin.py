"""A stand-in for the proxy's probe answer: the least any responder must do for the sidecar's proof.

``python -m bench.probe_standin --port P`` answers every request with 200 and the probe nonce
echoed in the answer header (controllerkit/probe.py's contract). The sidecar benchmark compares the
real proxy (mitmdump + tproxy addon) against it.
"""

from __future__ import annotations

import http.server
import sys

from controllerkit import probe
from controllerkit.cli import ExactArgumentParser


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        body = b"tproxy probe stand-in\n"
        self.send_response(200)
        self.send_header(probe.ANSWER_HEADER, self.headers.get(probe.NONCE_HEADER, ""))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def main(argv=None) -> int:
    p = ExactArgumentParser(prog="python -m bench.probe_standin", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args(argv)
    http.server.ThreadingHTTPServer(("0.0.0.0", a.port), Handler).serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
