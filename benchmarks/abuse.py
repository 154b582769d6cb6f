"""What a careless or hostile client does to a server, measured: bodies far larger than any route takes,
streamed whether or not the server answered; a large request that must be refused while small ones keep
coming; and how much the server's processes grew meanwhile."""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Streamed:
    status: int  # 0: no HTTP answer came
    answered_s: float  # from the first byte sent to the answer
    sent: int  # body bytes sent before the server stopped taking them (or all of them)


def stream_body(host: str, port: int, path: str, total: int, headers: dict[str, str], chunk: int = 1 << 20) -> Streamed:
    """POST a chunked body of `total` bytes and keep sending it, whatever the server answered meanwhile (an
    attacker does not stop at a 401), until it is all sent or the server closes the connection."""
    sock = socket.create_connection((host, port), timeout=60)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n{head}\r\n".encode())
    piece = b"%x\r\n" % chunk + b"7" * chunk + b"\r\n"
    started, answered, sent, reply = time.monotonic(), None, 0, b""
    with sock:
        while sent < total:
            try:
                sock.sendall(piece)
            except OSError:  # the server closed the connection: it stopped reading
                break
            sent += chunk
            if answered is None and select.select([sock], [], [], 0)[0]:
                answered = time.monotonic() - started
                with contextlib.suppress(OSError):
                    reply = sock.recv(65536)
        if answered is None:
            with contextlib.suppress(OSError):
                sock.sendall(b"0\r\n\r\n")
            with contextlib.suppress(OSError):
                reply = sock.recv(65536)
            answered = time.monotonic() - started
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return Streamed(status, answered, sent)


def _rss(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


class MemoryWatch(threading.Thread):
    """The largest total RSS of `processes`, sampled every 20 ms from start() until growth() is asked."""

    def __init__(self, processes: list[psutil.Process]) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.baseline = self.peak = _rss(processes)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, _rss(self.processes))

    def growth(self) -> int:
        """Bytes of the peak above what they held at the start."""
        self._done.set()
        self.join()
        return self.peak - self.baseline


def oversized_json_request(size: int) -> bytes:
    """A JSON infer request of about `size` bytes for cnn's `image` whose batch is past any limit: refused
    unread when `size` is past the largest request cnn takes (about 12.6 MB), else read, parsed and refused on
    its shape."""
    values = 3 * 32 * 32
    rows = size // (values * len(b"0.25,"))
    doc = b'{"inputs":[{"name":"image","datatype":"FP32","shape":[%d,3,32,32],"data":[' % rows
    return doc + b"0.25," * (rows * values - 1) + b"0.25]}]}"


def post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def waits_while(host: str, port: int, small: tuple[str, bytes, dict], work: Callable[[], None], every_s: float = 0.1):
    """How long each small request (path, body, headers), sent every `every_s` on its own connection, waited
    while `work()` ran (with a second of them before and half a second after): [(seconds, status)]."""
    waits: list[tuple[float, int]] = []
    stop = threading.Event()

    def probe() -> None:
        while not stop.wait(every_s):
            started = time.monotonic()
            status, _ = post(host, port, *small)
            waits.append((time.monotonic() - started, status))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        time.sleep(1.0)
        work()
        time.sleep(0.5)
    finally:
        stop.set()
        prober.join(60)
    return waits
