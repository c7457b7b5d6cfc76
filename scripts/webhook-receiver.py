#!/usr/bin/env python3
"""A webhook receiver for the walkthrough: answers 204 to every POST and keeps
the last delivery (three X-ATL-* headers, a blank line, the body) in a file.

    python3 scripts/webhook-receiver.py PORT FILE     # listens on 127.0.0.1:PORT
PORT 0 picks a free port; the port listened on is printed on stdout.
"""
import http.server
import sys


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[2], "w") as f:
            for h in ("X-ATL-Delivery", "X-ATL-Event", "X-ATL-Signature"):
                f.write(f"{h}: {self.headers[h]}\n")
            f.write("\n" + body.decode() + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver)
print(server.server_address[1], flush=True)
server.serve_forever()
