"""A soak with faults against a real `jaxserve serve`: many streaming clients for a long time, a
mix of request kinds, clients that disconnect mid-stream, and bursts above `--max-queue`.

    .venv/bin/python experiments/soak.py [--model smollm2-135m] [--minutes 30] [--clients 64]
        [--max-queue 64] [--out experiments/soak]

Request kinds: streamed chat and completions (with logprobs), seeded completions with `echo`
(each prompt carries a nonce, so a response crossed with another request's shows; each is
replayed alone at the end and must give the same text), embeddings, JSON-Schema-constrained
chat (the content must parse and hold the required keys), chat with tools, and `n = 3`.
10% of streams are dropped by their client after two chunks. A burst of `max-queue + clients`
short requests arrives every `--burst-every` seconds (429 expected for some; never a 5xx).

Reported (stdout as markdown, `soak.json` and `soak.png` in `--out`): requests by kind and
status, TTFT and the gap between streamed chunks (a chunk carries up to `decode_steps` tokens)
p50 / p99 per window (5 minutes, or a sixth of a shorter run), RSS and KV
pages over time, compiles after warm-up, lost responses (a 200 that never finished, a
transport error), crossed ones (a nonce or stream id that is not the request's), replays that
differ, and the KV pages in use once idle.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from soak_report import markdown, plot, summarize

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
KINDS = {  # kind: weight
    "chat_stream": 30,
    "completion_stream": 20,
    "seeded": 15,
    "embedding": 10,
    "constrained": 10,
    "tools": 5,
    "n3": 10,
}
WORDS = "sea wave ship harbor wind salt tide shore island storm coral whale".split()


@dataclass
class Record:
    kind: str
    start: float
    end: float = 0.0
    status: int | str = 0
    ttft: float | None = None
    gap: float | None = None  # mean time between streamed chunks
    lost: bool = False
    crossed: bool = False
    dropped: bool = False  # the client disconnected on purpose


@dataclass
class Soak:
    url: str
    model: str
    rng: random.Random
    records: list[Record] = field(default_factory=list)
    seeded: list[tuple[dict, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)

    def prompt(self) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(4, 24)))


def _stream(soak: Soak, client: httpx.Client, path: str, body: dict, rec: Record) -> None:
    """A streamed request: TTFT, the mean gap between its chunks, the finish chunk, one id
    across chunks; 10% are dropped by the client after two chunks."""
    drop = soak.rng.random() < 0.10
    first = last = None
    chunks, finished, ids = 0, False, set()
    with client.stream("POST", path, json=body) as response:
        rec.status = response.status_code
        if response.status_code != 200:
            response.read()
            return
        for line in response.iter_lines():
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            ids.add(data.get("id"))
            if "error" in data:
                rec.status = "stream error"
                return
            for choice in data.get("choices", []):
                if choice.get("finish_reason"):
                    finished = True
            now = time.perf_counter()
            first = first or now
            last = now
            chunks += 1
            if drop and chunks == 2:
                rec.dropped = True
                return  # closing the stream aborts the request
    rec.crossed = len(ids) > 1
    rec.lost = not finished
    if first is not None:
        rec.ttft = first - rec.start
        rec.gap = (last - first) / max(chunks - 1, 1)


def one_request(soak: Soak, client: httpx.Client, kind: str) -> None:
    rec = Record(kind, time.perf_counter())
    base = {"model": soak.model}
    try:
        if kind == "chat_stream":
            messages = [{"role": "user", "content": soak.prompt()}]
            body = {
                **base,
                "messages": messages,
                "max_tokens": 48,
                "stream": True,
                "temperature": 0.8,
                "logprobs": True,
                "top_logprobs": 2,
            }
            _stream(soak, client, "/v1/chat/completions", body, rec)
        elif kind == "completion_stream":
            body = {
                **base,
                "prompt": soak.prompt(),
                "max_tokens": 48,
                "stream": True,
                "logprobs": 2,
            }
            _stream(soak, client, "/v1/completions", body, rec)
        elif kind == "seeded":
            nonce = uuid.uuid4().hex[:8]
            body = {
                **base,
                "prompt": f"{nonce} {soak.prompt()}",
                "max_tokens": 24,
                "echo": True,
                "seed": soak.rng.randrange(1 << 30),
                "temperature": 0.9,
            }
            response = client.post("/v1/completions", json=body)
            rec.status = response.status_code
            if response.status_code == 200:
                text = response.json()["choices"][0]["text"]
                rec.crossed = not text.startswith(body["prompt"])
                with soak.lock:
                    soak.seeded.append((body, text))
        elif kind == "embedding":
            body = {**base, "input": [soak.prompt(), soak.prompt()]}
            response = client.post("/v1/embeddings", json=body)
            rec.status = response.status_code
            if response.status_code == 200:
                rec.lost = len(response.json()["data"]) != 2
        elif kind == "constrained":
            messages = [{"role": "user", "content": "A person as JSON: " + soak.prompt()}]
            body = {
                **base,
                "messages": messages,
                "max_tokens": 64,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "schema": SCHEMA},
                },
            }
            response = client.post("/v1/chat/completions", json=body)
            rec.status = response.status_code
            if response.status_code == 200:
                choice = response.json()["choices"][0]
                if choice["finish_reason"] == "stop":  # complete: must parse and hold the keys
                    value = json.loads(choice["message"]["content"])
                    rec.crossed = not {"name", "age"} <= set(value)
        elif kind == "tools":
            messages = [{"role": "user", "content": "Weather in " + soak.prompt()}]
            body = {**base, "messages": messages, "max_tokens": 48, "tools": TOOLS}
            response = client.post("/v1/chat/completions", json=body)
            rec.status = response.status_code
        elif kind == "n3":
            body = {**base, "prompt": soak.prompt(), "max_tokens": 16, "n": 3, "temperature": 1.0}
            response = client.post("/v1/completions", json=body)
            rec.status = response.status_code
            if response.status_code == 200:
                rec.lost = sorted(c["index"] for c in response.json()["choices"]) != [0, 1, 2]
    except (httpx.HTTPError, json.JSONDecodeError, KeyError) as error:
        rec.status, rec.lost = type(error).__name__, True
    rec.end = time.perf_counter()
    soak.add(rec)


def client_loop(soak: Soak, deadline: float) -> None:
    kinds, weights = list(KINDS), list(KINDS.values())
    with httpx.Client(base_url=soak.url, timeout=600) as client:
        while time.perf_counter() < deadline:
            one_request(soak, client, soak.rng.choices(kinds, weights)[0])


def burst(soak: Soak, size: int) -> None:
    """`size` short requests at once: the queue fills, the rest get 429 (never a 5xx)."""

    def one() -> None:
        rec = Record("burst", time.perf_counter())
        try:
            with httpx.Client(base_url=soak.url, timeout=600) as client:
                body = {"model": soak.model, "prompt": soak.prompt(), "max_tokens": 8}
                rec.status = client.post("/v1/completions", json=body).status_code
        except httpx.HTTPError as error:
            rec.status, rec.lost = type(error).__name__, True
        rec.end = time.perf_counter()
        soak.add(rec)

    threads = [threading.Thread(target=one) for _ in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def engine_numbers(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    values: dict[str, float] = {}  # summed over the models (each line has a model label)
    for m in re.finditer(r"^jaxserve_engine_(\w+)(?:\{[^}]*\})? (\S+)$", text, re.M):
        values[m[1]] = values.get(m[1], 0.0) + float(m[2])
    return values


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024


def wait_ready(url: str, proc: subprocess.Popen, seconds: float = 1800) -> None:
    """/health 200 with every bucket compiled (or the warm-up's own stop), so compiles during
    the soak are compiles after warm-up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            r = httpx.get(url + "/health", timeout=5)
            warm = r.json().get("warmup") if r.status_code == 200 else None
            if r.status_code == 200 and (not warm or warm["compiled"] >= warm["total"]):
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError("the server did not become ready")


def run(
    model: str,
    *,
    minutes: float,
    clients: int,
    max_queue: int,
    port: int,
    out: Path,
    burst_every: float | None = None,
    serve_args: tuple[str, ...] = (),
    seed: int = 0,
    replays: int | None = None,
) -> dict:
    """Serve `model`, soak it, and return the summary (also written to `out`/soak.json);
    `replays`: how many seeded requests to replay at the end (None: every one)."""
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "jaxserve.cli",
        "serve",
        model,
        "--port",
        str(port),
        "--max-queue",
        str(max_queue),
        *serve_args,
    ]
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "server.log").open("w")  # the server's log, kept for a look afterwards
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, proc)
        name = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        soak = Soak(url, name, random.Random(seed))
        duration = minutes * 60
        window = 300.0 if duration >= 1800 else duration / 6
        burst_every = burst_every or (300.0 if duration >= 1800 else duration / 3)
        compiles_before = engine_numbers(url).get("compiles_after_warmup", 0.0)
        start = time.perf_counter()
        deadline = start + duration
        samples: list[dict] = []
        workers = [
            threading.Thread(target=client_loop, args=(soak, deadline)) for _ in range(clients)
        ]
        for w in workers:
            w.start()
        next_burst = start + burst_every / 2
        while time.perf_counter() < deadline:
            numbers = engine_numbers(url)
            samples.append(
                {
                    "t": time.perf_counter() - start,
                    "rss_mb": rss_mb(proc.pid),
                    "kv_pages": numbers.get("kv_pages_used", 0.0),
                    "running": numbers.get("num_running", 0.0),
                    "waiting": numbers.get("num_waiting", 0.0),
                }
            )
            if time.perf_counter() >= next_burst:
                threading.Thread(target=burst, args=(soak, max_queue + clients)).start()
                next_burst += burst_every
            time.sleep(2.0)
        for w in workers:
            w.join()
        idle = _wait_idle(url)
        replays = _replay(url, soak, replays)
        summary = summarize(soak, samples, start, window, idle, replays)
        summary["compiles_after_warmup"] = (
            engine_numbers(url).get("compiles_after_warmup", 0.0) - compiles_before
        )
        summary["health_after"] = httpx.get(url + "/health", timeout=10).status_code
        summary["config"] = {
            "model": model,
            "minutes": minutes,
            "clients": clients,
            "max_queue": max_queue,
            "serve_args": list(serve_args),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    (out / "soak.json").write_text(json.dumps(summary, indent=1))
    plot(samples, out / "soak.png")
    return summary


def _wait_idle(url: str, seconds: float = 120) -> dict[str, float]:
    deadline = time.monotonic() + seconds
    numbers = engine_numbers(url)
    while time.monotonic() < deadline and (
        numbers.get("num_running") or numbers.get("num_waiting")
    ):
        time.sleep(1)
        numbers = engine_numbers(url)
    return numbers


def _replay(url: str, soak: Soak, limit: int | None = None) -> dict[str, int]:
    """Seeded requests again, one at a time on an idle server: the same text, or a difference."""
    same = differ = 0
    with httpx.Client(base_url=url, timeout=600) as client:
        for body, text in soak.seeded[:limit]:
            again = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
            same, differ = (same + 1, differ) if again == text else (same, differ + 1)
    return {"same": same, "differ": differ, "seeded": len(soak.seeded)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--port", type=int, default=8095)
    parser.add_argument("--out", type=Path, default=Path("experiments/soak"))
    parser.add_argument("--replays", type=int, default=None, help="seeded replays (all)")
    args, serve_args = parser.parse_known_args()
    summary = run(
        args.model,
        minutes=args.minutes,
        clients=args.clients,
        max_queue=args.max_queue,
        port=args.port,
        out=args.out,
        serve_args=tuple(serve_args),
        replays=args.replays,
    )
    print(markdown(summary))


if __name__ == "__main__":
    main()
