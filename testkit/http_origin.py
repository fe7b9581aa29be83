#!/usr/bin/env python3
"""A local HTTP/1.1 origin for the proxy tests: a real server with keep-alive, chunked
bodies both ways, HEAD, Expect: 100-continue, static files, and a WebSocket echo.

    http_origin.py ADDR ROOT        prints "PORT\n" once listening on ADDR:0

Routes:
  GET|HEAD /bytes/N     N bytes, byte i = i % 251, with Content-Length
  GET /chunked/N        the same N bytes in the chunked coding, chunks of 1..9000 bytes
  POST|PUT /sha256      the hex SHA-256 of the request body (Content-Length or chunked)
  GET /connections      how many TCP connections the server has accepted
  GET /ws               WebSocket echo (RFC 6455, text and binary, unmasked replies)
  anything else         files under ROOT (directory listings included)
"""

import base64
import hashlib
import http.server
import os
import socketserver
import struct
import sys
import threading

CONNECTIONS = 0
LOCK = threading.Lock()


def pattern(n):
    block = bytes(i % 251 for i in range(251))
    whole, rest = divmod(n, 251)
    return block * whole + block[:rest]


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        global CONNECTIONS
        with LOCK:
            CONNECTIONS += 1
        super().setup()

    def log_message(self, *args):
        pass

    def send_body(self, body, ctype="application/octet-stream"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        if self.path.startswith("/bytes/"):
            return self.send_body(pattern(int(self.path[7:])))
        return super().do_HEAD()

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            return self.send_body(pattern(int(self.path[7:])))
        if self.path.startswith("/chunked/"):
            body = pattern(int(self.path[9:]))
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            i, size = 0, 1
            while i < len(body):
                part = body[i : i + size]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                i += len(part)
                size = size * 7 % 9001 or 1
            self.wfile.write(b"0\r\n\r\n")
            return
        if self.path == "/connections":
            return self.send_body(str(CONNECTIONS).encode(), "text/plain")
        if self.path == "/ws":
            return self.websocket()
        return super().do_GET()

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_POST(self):
        if self.path == "/sha256":
            return self.send_body(hashlib.sha256(self.read_body()).hexdigest().encode(), "text/plain")
        self.send_error(404)

    do_PUT = do_POST

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            opcode, n = head[0] & 0x0F, head[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self.rfile.read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self.rfile.read(8))[0]
            mask = self.rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            if opcode == 8:
                self.wfile.write(b"\x88\x00")
                return
            if opcode in (1, 2):
                if len(data) < 126:
                    frame = bytes([0x80 | opcode, len(data)])
                else:
                    frame = bytes([0x80 | opcode, 126]) + struct.pack(">H", len(data))
                self.wfile.write(frame + data)
                self.wfile.flush()


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: a burst of connections would overflow
    # it and be reset, which a proxy rightly reports as 502.
    request_queue_size = 1024


def main():
    addr, root = sys.argv[1], sys.argv[2]
    os.chdir(root)
    server = Server((addr, 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
