"""An OpenAI-compatible HTTP server on loopback with scripted replies, for the tests of the creator's
OpenAI backend (tests/test_generation_backends.py) and of the entry points that serve the creator
from one (--eva.evolver_url). Test files load it by path: tests/ is not a package."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedServer:
    """An OpenAI-compatible server on 127.0.0.1 whose behaviour per request comes from ``script(body, n)``.

    ``script`` returns (status, body bytes, delay seconds before answering). The server records every
    request body and header, and the most requests it ever had in flight at once.
    """

    def __init__(self, script):
        self.script, self.requests, self.in_flight, self.max_in_flight = script, [], 0, 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    number = len(server.requests)
                    server.requests.append((self.path, dict(self.headers), body))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                status, payload, delay = server.script(body, number)
                time.sleep(delay)
                # Out of flight before the reply leaves: the client may send its next request as soon as
                # it has read this one, possibly before this thread would run another line.
                with server.lock:
                    server.in_flight -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_reply(text):
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()
