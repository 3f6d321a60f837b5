#!/usr/bin/env python3
"""A TCP relay that adds a fixed latency: network round trips on loopback, where the kernel has no netem.

    python3 bench/relay.py --listen 127.0.0.1:9001 --target 127.0.0.1:9000 [--delay-ms 10]

Every accepted connection is connected to the target, and every chunk read from either side is delivered to the
other side --delay-ms (default 10) after it was read: a request and its answer take twice that longer, as over a
link with that one-way delay. Per connection and direction, a reader task stamps each chunk with the time it is
due and queues it, and a writer task waits until each chunk is due and writes it: the reader never sleeps, so the
bandwidth stays that of loopback (up to the queue's bound, 256 chunks of 64 KiB in flight per direction) and only
the latency changes. Order is kept; an end of stream (a half-close) reaches the other side the same delay later,
and a connection is closed when both directions have ended or either side broke it.

As a script it runs until SIGTERM or SIGINT, prints `relay listening on ADDR` once it accepts, and on exit prints
its counts (connections, bytes each way) to stderr. Imported, start_in_thread() runs the same relay on its own
event loop in a daemon thread and returns a handle with .port, .stats() and .stop().
"""

import argparse
import asyncio
import signal
import sys
import threading

CHUNK = 64 * 1024
QUEUE_CHUNKS = 256


class Relay:
    """The relay's state: where it forwards to, the delay, and its counts."""

    def __init__(self, target_host, target_port, delay):
        self.target = (target_host, target_port)
        self.delay = delay  # seconds, each way
        self.connections = 0
        self.active = 0
        self.failed_connects = 0
        self.bytes_up = 0  # client to target
        self.bytes_down = 0  # target to client
        self.server = None
        # The connections' tasks, held here: the event loop keeps only weak references to tasks, and streams keep
        # only weak references to their readers, so a connection whose client has closed its side while the
        # target has not answered yet is otherwise reachable from nothing and collected mid-flight.
        self.tasks = set()

    def stats(self):
        return {"connections": self.connections, "active": self.active, "failed_connects": self.failed_connects,
                "bytes_to_target": self.bytes_up, "bytes_from_target": self.bytes_down}

    async def start(self, host, port):
        self.server = await asyncio.start_server(self._accept, host, port, backlog=1024, limit=CHUNK)
        return self.server.sockets[0].getsockname()[1]

    async def _accept(self, c_reader, c_writer):
        self.connections += 1
        self.active += 1
        me = asyncio.current_task()
        self.tasks.add(me)
        t_writer = None
        try:
            try:
                t_reader, t_writer = await asyncio.open_connection(*self.target, limit=CHUNK)
            except OSError:
                # the client sees what it would see without the relay: a connection closed at once
                self.failed_connects += 1
                return
            up = asyncio.ensure_future(self._pipe(c_reader, t_writer, True))
            down = asyncio.ensure_future(self._pipe(t_reader, c_writer, False))
            done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
            for t in pending:  # one side broke: the other direction cannot finish either
                t.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
        finally:
            self.active -= 1
            self.tasks.discard(me)
            for w in (c_writer, t_writer):
                if w is not None:
                    w.close()

    async def _pipe(self, reader, writer, up):
        """One direction: the reader task queues (due, chunk), this task writes each chunk when it is due;
        chunk None is the end of stream. A reset on either end raises and ends the connection."""
        loop = asyncio.get_running_loop()
        queue = asyncio.Queue(QUEUE_CHUNKS)

        async def read():
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    await queue.put((loop.time() + self.delay, b"", True))
                    return
                await queue.put((loop.time() + self.delay, data, False))
                if not data:
                    return

        reader_task = asyncio.ensure_future(read())
        try:
            while True:
                due, data, broken = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if broken:
                    raise ConnectionResetError("the sending side broke the connection")
                if not data:
                    if writer.can_write_eof():
                        try:
                            writer.write_eof()
                        except OSError:
                            pass
                    return
                writer.write(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await writer.drain()
        finally:
            reader_task.cancel()


class ThreadedRelay:
    """A Relay on its own event loop in a daemon thread (start_in_thread)."""

    def __init__(self, relay, loop, thread, port):
        self.relay, self.loop, self.thread, self.port = relay, loop, thread, port

    def stats(self):
        return self.relay.stats()

    def stop(self):
        def close():
            self.relay.server.close()
            self.loop.stop()
        self.loop.call_soon_threadsafe(close)
        self.thread.join(timeout=10)


def start_in_thread(target_host, target_port, delay_ms=10.0, host="127.0.0.1", port=0):
    """Starts a relay to target on host:port (0: a free port) in a background thread; returns a ThreadedRelay
    once it accepts connections."""
    relay = Relay(target_host, target_port, delay_ms / 1000.0)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    box = {}

    def run():
        asyncio.set_event_loop(loop)
        try:
            box["port"] = loop.run_until_complete(relay.start(host, port))
        except Exception as e:  # reported by the caller
            box["error"] = e
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name="relay", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in box:
        raise RuntimeError(f"the relay did not start: {box.get('error', 'no answer within 30 s')}")
    return ThreadedRelay(relay, loop, thread, box["port"])


def parse_addr(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host, int(port)


async def serve(listen, target, delay_ms):
    relay = Relay(target[0], target[1], delay_ms / 1000.0)
    port = await relay.start(*listen)
    print(f"relay listening on {listen[0]}:{port}, to {target[0]}:{target[1]}, {delay_ms:g} ms each way",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    relay.server.close()
    print(f"relay: {relay.stats()}", file=sys.stderr, flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", type=parse_addr, required=True, help="HOST:PORT to accept on (port 0: any)")
    ap.add_argument("--target", type=parse_addr, required=True, help="HOST:PORT to connect each connection to")
    ap.add_argument("--delay-ms", type=float, default=10.0, help="delay each way in milliseconds (default 10)")
    a = ap.parse_args(argv)
    asyncio.run(serve(a.listen, a.target, a.delay_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
