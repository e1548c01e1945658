"""The soak's two-minute version (`experiments/soak.py`) against a real `jaxserve serve` of the
tiny model: 16 clients mixing streamed chat and completions, seeded echo requests, embeddings,
constrained and tool calls and `n = 3`, 10% of streams dropped mid-way, bursts above
`--max-queue`. No 5xx, nothing lost or crossed, every seeded response equal to its replay, the
KV pages back to 0 once idle, nothing compiled after warm-up, /health still 200."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.http_server import free_port

sys.path.insert(0, str(Path(__file__).parent.parent / "experiments"))
import soak  # noqa: E402


@pytest.mark.slow
def test_two_minute_soak_with_faults(tiny_gguf, tmp_path):
    summary = soak.run(
        str(tiny_gguf),
        minutes=2,
        clients=16,
        max_queue=16,
        port=free_port(),
        out=tmp_path,
        serve_args=("--max-num-seqs", "8"),
    )
    print(soak.markdown(summary))
    assert summary["requests"] > 100
    assert summary["server_errors"] == 0 and summary["other_errors"] == 0
    assert summary["lost"] == 0 and summary["crossed"] == 0
    assert summary["dropped_on_purpose"] > 0  # the drops happened, and lost nothing else
    replays = summary["replays"]
    assert replays["differ"] == 0 and replays["same"] == replays["seeded"] > 0  # every one
    assert any(k.startswith("burst 429") for k in summary["statuses"])  # the queue overflowed
    assert summary["kv_pages_idle"] == 0
    assert summary["compiles_after_warmup"] == 0
    assert summary["health_after"] == 200
    assert (tmp_path / "soak.png").stat().st_size > 5_000
