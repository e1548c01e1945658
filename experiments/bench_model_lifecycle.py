"""Loading and unloading a model at run time on a live server: resident memory before the load,
with both models serving, and after the unload; the load's wall time; the first model's
tokens/s while the second one loads.

    .venv/bin/python experiments/bench_model_lifecycle.py [--second gemma3-270m]

Starts `jaxserve serve smollm2-135m` (int8, defaults), waits for /ready (every shape compiled:
the background warm-up grows RSS until then), sends requests to it, then `POST /admin/models`
the second model, streams requests to the first one while it loads,
sends requests to the second, `DELETE /admin/models/{id}`, sends requests to the first again.
RSS is read from /proc/PID/status (VmRSS) after a short settle.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request


def _call(url: str, body: dict | None = None, method: str | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=900) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (urllib.error.URLError, ConnectionError):
        return 0, {}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def complete(base: str, model: str, n: int = 3) -> int:
    tokens = 0
    for _ in range(n):
        body = {"model": model, "prompt": "The history of Rome", "max_tokens": 32}
        status, out = _call(base + "/v1/completions", {**body, "ignore_eos": True})
        assert status == 200, out
        tokens += out["usage"]["completion_tokens"]
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--first", default="smollm2-135m")
    parser.add_argument("--second", default="gemma3-270m")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "jaxserve.cli", "serve", args.first, "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        while _call(base + "/health")[0] != 200:
            time.sleep(0.2)
        complete(base, args.first)
        while _call(base + "/ready")[0] != 200:  # its background warm-up grows RSS meanwhile
            time.sleep(1)
        complete(base, args.first)
        time.sleep(2)
        before = rss_mb(proc.pid)

        served, stop = [0], threading.Event()

        def keep_serving() -> None:
            started = time.perf_counter()
            while not stop.is_set():
                served[0] += complete(base, args.first, 1)
            served.append(time.perf_counter() - started)

        worker = threading.Thread(target=keep_serving)
        worker.start()
        start = time.perf_counter()
        status, out = _call(base + "/admin/models", {"model": args.second, "name": "second"})
        assert status == 202, out
        while _call(base + "/admin/models/second")[1].get("status") != "ready":
            time.sleep(0.1)
        load_s = time.perf_counter() - start
        stop.set()
        worker.join()
        complete(base, "second")
        time.sleep(2)
        both = rss_mb(proc.pid)
        start = time.perf_counter()
        status, out = _call(base + "/admin/models/second", method="DELETE")
        assert status == 200, out
        unload_s = time.perf_counter() - start
        complete(base, args.first)
        time.sleep(2)
        after = rss_mb(proc.pid)
        print(f"| RSS, {args.first} serving | {before:.0f} MiB |")
        print(f"| RSS, + {args.second} loaded and serving | {both:.0f} MiB |")
        print(f"| RSS, after unloading {args.second} | {after:.0f} MiB ({after / before:.2f}x) |")
        print(f"| load of {args.second} until it serves | {load_s:.1f} s |")
        print(f"| unload | {unload_s:.1f} s |")
        rate = served[0] / served[1]
        print(f"| {args.first} while {args.second} loaded | {served[0]} tokens, {rate:.1f} tok/s |")
    finally:
        proc.terminate()
        proc.wait(60)


if __name__ == "__main__":
    main()
