"""A small artifact store on loopback for tests/it/store.rs, honest and not.

Usage: python3 store_server.py DIR [CERT KEY]
Serves the files in DIR on 127.0.0.1 at a free port, which it prints on the
first line of stdout; over https with CERT and KEY (PEM files). The first path component picks the behaviour:

  /ok/NAME        the file, with its Content-Length
  /chunked/NAME   the file, chunked (no Content-Length)
  /flaky/NAME     500 on the first request for each path, then the file
  /down/NAME      500, always
  /missing/NAME   404
  /cut/NAME       the right Content-Length, then half the body and a close
  /long/NAME      a Content-Length smaller than the body, and the whole body
  /stall/NAME     the headers and 64 KiB, then nothing for 60 s
  /loop/NAME      a redirect to itself, forever

(down, cut, long, stall and loop serve NAME.sha256 and NAME.minisig whole.)
  /moved/NAME     a redirect to /ok/NAME
  /tampered/NAME  the file with one byte changed; NAME.sha256 matches that
  /padded/NAME    the file, then a 256 MiB zstd skippable frame (which a
                  zstd reader skips), with the Content-Length of it all
  /auth/NAME      the file, only with basic auth test:s3cret

It exits after 10 minutes whatever happens, so a test that dies cannot leave
it running for long.
"""

import base64
import hashlib
import http.server
import os
import ssl
import sys
import threading
import time

ROOT = sys.argv[1]
SEEN = set()
LOCK = threading.Lock()


def tamper(data):
    # A byte in the middle of the compressed stream.
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", length=None, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def file(self, name):
        path = os.path.join(ROOT, os.path.basename(name))
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            return f.read()

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/", 1)
        if len(parts) != 2:
            return self.send(404)
        mode, name = parts
        sidecar = name.endswith((".sha256", ".minisig"))
        if sidecar and mode in ("down", "cut", "long", "stall", "loop", "padded"):
            # The hostile modes hit the artifact; its sidecars are served whole.
            mode = "ok"
        if mode == "missing":
            return self.send(404, b"not here\n")
        if mode == "loop":
            return self.send(302, headers=[("Location", self.path)])
        if mode == "moved":
            return self.send(301, headers=[("Location", "/ok/" + name)])
        if mode == "down":
            return self.send(500, b"down\n")
        if mode == "flaky":
            with LOCK:
                first = self.path not in SEEN
                SEEN.add(self.path)
            if first:
                return self.send(500, b"try again\n")
        if mode == "auth":
            want = "Basic " + base64.b64encode(b"test:s3cret").decode()
            if self.headers.get("Authorization") != want:
                return self.send(401, headers=[("WWW-Authenticate", 'Basic realm="store"')])
        if mode == "tampered":
            if name.endswith(".sha256"):
                data = self.file(name[: -len(".sha256")])
                if data is None:
                    return self.send(404)
                digest = hashlib.sha256(tamper(data)).hexdigest()
                return self.send(200, f"{digest}  {name[:-7]}\n".encode())
            data = self.file(name)
            if data is not None and not name.endswith(".minisig"):
                data = tamper(data)
        else:
            data = self.file(name)
        if data is None:
            return self.send(404, b"no such file\n")
        if mode == "chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = 100_000
            for i in range(0, len(data), step):
                piece = data[i : i + step]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
            return
        if mode == "cut":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if mode == "long":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) // 2))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(data)
            except OSError:
                pass
            self.close_connection = True
            return
        if mode == "padded":
            pad = 256 << 20
            frame = (0x184D2A50).to_bytes(4, "little") + pad.to_bytes(4, "little")
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + len(frame) + pad))
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self.wfile.write(data + frame)
                zeros = bytes(1 << 20)
                for _ in range(pad >> 20):
                    self.wfile.write(zeros)
            except OSError:
                pass
            self.close_connection = True
            return
        if mode == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:65536])
            self.wfile.flush()
            time.sleep(60)
            self.close_connection = True
            return
        self.send(200, data)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # A client that hung up on a hostile body: expected, not news.
        pass


def main():
    server = Server(("127.0.0.1", 0), Handler)
    if len(sys.argv) == 4:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[2], sys.argv[3])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    threading.Timer(600, lambda: os._exit(0)).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
