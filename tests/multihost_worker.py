"""One process of the two-process test (`test_multihost.py`): one CPU device each, one mesh.

python -m tests.multihost_worker PROCESS_ID PORT MODEL OUT_JSON
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    process_id, port, model, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    from jaxserve.runtime.distributed import DistributedConfig, follow, initialize

    initialize(DistributedConfig(f"localhost:{port}", num_processes=2, process_id=process_id))
    from jaxserve import LLM
    from tests.test_multihost import PROMPTS, params

    llm = LLM(model, weights="f32", tensor_parallel=2, max_model_len=64, max_num_seqs=4)
    if not llm.is_leader:
        calls = follow(llm.engine.runner)
        print(f"follower ran {calls} calls", flush=True)
        return
    outs = llm.generate(PROMPTS, params())
    llm.engine.runner.mirror.close()
    with open(out, "w", encoding="utf-8") as f:
        json.dump([o.token_ids for o in outs], f)


if __name__ == "__main__":
    main()
