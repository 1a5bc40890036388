"""An open-loop HTTP load generator, as wrk2 and MLPerf's Server scenario measure servers.

Requests are sent at Poisson arrival times fixed before the run; each latency counts from the
intended send time, so a server that falls behind is charged for the wait it causes (a closed
loop, which only sends when an answer comes back, hides overload). The client is a small
HTTP/1.1 keep-alive client on asyncio streams (a pool of connections, a new one whenever all
are busy), cheap enough to offer a few thousand requests a second from one core.

Only for this machine's own servers: :func:`open_loop` refuses any host but the loopback.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class Result:
    """One offered rate: what was sent and how it went."""

    rate: float  # offered requests per second
    sent: int
    latency_s: np.ndarray  # (sent,) from intended send time to the answer; inf if none or not 2xx
    status: np.ndarray  # (sent,) HTTP status, 0 when no answer came in time
    seconds: float  # from the first intended send to the last answer

    def summary(self) -> dict:
        ok = self.status // 100 == 2
        lat = self.latency_s
        pct = {f"p{q}_ms": _ms(percentile(lat, q)) for q in (50, 95, 99)}
        return {"offered_rps": round(self.rate, 2), "sent": self.sent, "ok": int(ok.sum()),
                "rejected_503": int((self.status == 503).sum()), "failed": int((~ok).sum()),
                "achieved_rps": round(float(ok.sum() / self.seconds), 2) if self.seconds > 0 else 0.0, **pct}


def percentile(latency_s: np.ndarray, q: float) -> float:
    """The q-th percentile of latencies, an unanswered request (inf) counting as later than any other."""
    value = float(np.percentile(np.minimum(latency_s, 1e9), q, method="higher"))
    return np.inf if value >= 1e9 else value


def _ms(seconds: float) -> float | None:
    return None if not math.isfinite(seconds) else round(float(seconds) * 1000, 3)


def poisson_schedule(rate: float, count: int, seed: int) -> np.ndarray:
    """(count,) send times in seconds from 0: exponential gaps of mean 1/rate."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
    return np.cumsum(gaps) - gaps[0]


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        length, status = 0, int(status_line.split()[1])
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)


async def _send_all(host: str, port: int, path: str, bodies: Sequence[bytes], content_type: str,
                    times: np.ndarray, grace: float) -> Result:
    loop = asyncio.get_running_loop()
    idle: list[_Connection] = []
    latency = np.full(len(times), np.inf)
    status = np.zeros(len(times), np.int64)
    heads = {}

    async def one(i: int, start: float) -> None:
        body = bodies[i % len(bodies)]
        head = heads.get(len(body))
        if head is None:
            head = heads[len(body)] = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                                       f"Content-Length: {len(body)}\r\n\r\n").encode()
        reused = bool(idle)
        conn = idle.pop() if reused else _Connection(*await asyncio.open_connection(host, port))
        try:
            status[i], _ = await conn.post(head, body)
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
            conn.writer.close()
            if not reused:
                return
            try:  # the server closed an idle keep-alive connection: send again on a new one, as clients do
                conn = _Connection(*await asyncio.open_connection(host, port))
                status[i], _ = await conn.post(head, body)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                conn.writer.close()
                return
        if status[i] // 100 == 2:
            latency[i] = loop.time() - (start + times[i])
        idle.append(conn)

    start = loop.time() + 0.05
    tasks = []
    for i, t in enumerate(times):
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, start)))
    done, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    end = loop.time()
    for conn in idle:
        conn.writer.close()
    finished = latency[np.isfinite(latency)]
    seconds = (float(times[-1]) + (finished.max() if finished.size else 0.0)) if len(times) else 0.0
    return Result(0.0, len(times), latency, status, min(seconds, end - start))


def open_loop(url_host: str, port: int, path: str, bodies: Sequence[bytes], *, rate: float, duration: float,
              content_type: str = "image/png", seed: int = 0, grace: float = 10.0) -> Result:
    """Offer ``rate`` requests a second for ``duration`` seconds (Poisson), each a POST of the next body.

    Args:
        url_host: the server's host; only the loopback is allowed.
        grace: how long to wait for answers after the last send; later ones count as failed.
    """
    if url_host not in LOOPBACK:
        raise ValueError(f"load is only sent to this machine's loopback ({', '.join(LOOPBACK)}), not {url_host}")
    times = poisson_schedule(rate, max(1, int(rate * duration)), seed)
    result = asyncio.run(_send_all(url_host, port, path, bodies, content_type, times, grace))
    result.rate = rate
    return result


def sequential(url_host: str, port: int, path: str, bodies: Sequence[bytes], count: int,
               content_type: str = "image/png") -> np.ndarray:
    """(count,) latencies in seconds of requests sent one after another (no load: the floor)."""
    if url_host not in LOOPBACK:
        raise ValueError(f"load is only sent to this machine's loopback, not {url_host}")

    async def run() -> np.ndarray:
        conn = _Connection(*await asyncio.open_connection(url_host, port))
        out = np.empty(count)
        for i in range(count):
            body = bodies[i % len(bodies)]
            head = (f"POST {path} HTTP/1.1\r\nHost: {url_host}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            t = time.perf_counter()
            status, _ = await conn.post(head, body)
            out[i] = time.perf_counter() - t if status // 100 == 2 else np.inf
        conn.writer.close()
        return out

    return asyncio.run(run())


def closed_loop(url_host: str, port: int, path: str, bodies: Sequence[bytes], *, concurrency: int = 16,
                content_type: str = "image/png") -> list[tuple[int, bytes]]:
    """Send every body once, ``concurrency`` at a time; (status, response body) per request, in order."""
    if url_host not in LOOPBACK:
        raise ValueError(f"load is only sent to this machine's loopback, not {url_host}")

    async def run() -> list[tuple[int, bytes]]:
        out: list = [None] * len(bodies)
        queue = iter(range(len(bodies)))

        async def worker() -> None:
            conn = _Connection(*await asyncio.open_connection(url_host, port))
            for i in queue:
                head = (f"POST {path} HTTP/1.1\r\nHost: {url_host}\r\nContent-Type: {content_type}\r\n"
                        f"Content-Length: {len(bodies[i])}\r\n\r\n").encode()
                out[i] = await conn.post(head, bodies[i])
            conn.writer.close()

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return out

    return asyncio.run(run())


def max_rate_under(results: Sequence[Result], p99_slo_s: float) -> float:
    """The highest offered rate below the first (in rate order) whose p99 exceeds ``p99_slo_s``, or 0.

    A request without a 2xx answer counts as infinitely late.
    """
    best = 0.0
    for r in sorted(results, key=lambda r: r.rate):
        if percentile(r.latency_s, 99) > p99_slo_s:
            break
        best = r.rate
    return best


def saturation_rate(results: Sequence[Result], share: float = 0.95) -> float:
    """The highest offered rate, below the first that falls behind, at which the server kept up:
    at least ``share`` of the offered rate achieved and every request answered; 0 if none."""
    best = 0.0
    for r in sorted(results, key=lambda r: r.rate):
        summary = r.summary()
        if summary["achieved_rps"] < share * r.rate or summary["failed"]:
            break
        best = r.rate
    return best
