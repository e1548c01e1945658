"""Test helpers for the HTTP front: a uvicorn server on a free port in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 until the block ends; yields the base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def grpc_running(state) -> Iterator[str]:
    """Serve the gRPC front of `state` on its own event loop thread; yields "host:port"."""
    import asyncio

    from jaxserve.api.grpc_server import create_grpc_server

    address = f"127.0.0.1:{free_port()}"
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def start() -> None:
        holder["server"] = create_grpc_server(state, address)
        await holder["server"].start()
        started.set()

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.create_task(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30), "the gRPC server did not start"
    try:
        yield address
    finally:
        asyncio.run_coroutine_threadsafe(holder["server"].stop(0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
