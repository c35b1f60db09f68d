"""tests/lib/httpreq.py — what the end-to-end scripts' scripted HTTP servers
share (they run from the repository's root: `from tests.lib.httpreq import
...`). Not a test itself."""
import socket


def listen(port):
    """A listening socket on 127.0.0.1:port."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s


def read_request(c):
    """One request from connection c: (head, body) as bytes, the body as
    long as its Content-Length; None if the peer closed before its head
    ended (a readiness probe)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        got = c.recv(65536)
        if not got:
            return None
        buf += got
    head, _, body = buf.partition(b"\r\n\r\n")
    n = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            n = int(line.split(b":")[1])
    while len(body) < n:
        got = c.recv(65536)
        if not got:
            break
        body += got
    return head, body
