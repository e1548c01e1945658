"""Two processes on localhost (CPU collectives through gloo) serve one model split across them:
process 0 schedules and broadcasts each step, process 1 mirrors it; the tokens must be those of
one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from jaxserve import LLM, SamplingParams

ROOT = Path(__file__).parent.parent
PROMPTS = ["hello world", "the and the"]


def params() -> SamplingParams:
    return SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_tokens_of_one(tiny_gguf, tmp_path):
    out = tmp_path / "tokens.json"
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.multihost_worker",
                str(i),
                port,
                str(tiny_gguf),
                str(out),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=300)[0])
        finally:
            proc.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    assert "follower ran" in logs[1]
    ours = json.loads(out.read_text())
    one = LLM(str(tiny_gguf), weights="f32", max_model_len=64, max_num_seqs=4)
    assert ours == [o.token_ids for o in one.generate(PROMPTS, params())]
