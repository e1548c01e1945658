"""`jaxserve serve` split over devices: tensor parallel on 2 simulated CPU devices, and two
processes on localhost (process 0 serves HTTP, process 1 follows); both answer as one device."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from jaxserve import LLM, SamplingParams
from tests.http_server import free_port

ROOT = Path(__file__).parent.parent
BODY = {"prompt": "hello world", "max_tokens": 8, "temperature": 0, "ignore_eos": True}
COMMON = ["--weights", "f32", "--max-model-len", "64", "--max-num-seqs", "2"]


def _serve(args: list[str], devices: int) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen(
        [sys.executable, "-m", "jaxserve.cli", "serve", *args, *COMMON],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _complete_when_healthy(url: str, procs: list[subprocess.Popen]) -> str:
    deadline = time.monotonic() + 400
    with httpx.Client(base_url=url, timeout=60) as client:
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.communicate()[0][-3000:] for p in procs]
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        r = client.post("/v1/completions", json=BODY)
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]


def _expected(model: str) -> str:
    llm = LLM(model, weights="f32", max_model_len=64, max_num_seqs=2)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    return llm.generate(BODY["prompt"], params)[0].text


def _stop(procs: list[subprocess.Popen]) -> list[int]:
    procs[0].send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            p.communicate(timeout=60)
        finally:
            p.kill()
        codes.append(p.returncode)
    return codes


def test_serve_tensor_parallel_2_on_two_simulated_devices(tiny_gguf):
    port = free_port()
    procs = [_serve([str(tiny_gguf), "--port", str(port), "--tensor-parallel", "2"], devices=2)]
    try:
        text = _complete_when_healthy(f"http://127.0.0.1:{port}", procs)
    finally:
        codes = _stop(procs)
    assert text == _expected(str(tiny_gguf))
    assert codes == [0]


def test_serve_across_two_processes(tiny_gguf):
    port, coordinator = free_port(), free_port()
    common = [str(tiny_gguf), "--port", str(port), "--tensor-parallel", "2"]
    group = ["--coordinator-address", f"localhost:{coordinator}", "--num-processes", "2"]
    procs = [_serve([*common, *group, "--process-id", str(i)], devices=1) for i in range(2)]
    try:
        text = _complete_when_healthy(f"http://127.0.0.1:{port}", procs)
    finally:
        codes = _stop(procs)  # SIGTERM to process 0; it releases process 1
    assert text == _expected(str(tiny_gguf))
    assert codes == [0, 0]
