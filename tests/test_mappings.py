"""The process's memory-mapping budget: XLA CPU maps every compiled kernel, and Linux caps the
mappings of a process (`vm.max_map_count`), so the runner drops its compiled steps before a new
shape would cross the limit, and the background warm-up stops early."""

from __future__ import annotations

import gc
import os

import pytest

from jaxserve import LLM, SamplingParams
from jaxserve.engine import background_warmup as engine_module
from jaxserve.engine.mappings import mapping_use
from jaxserve.runtime import runner as runner_module

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def _regions() -> int:
    with open(f"/proc/{os.getpid()}/maps", "rb") as maps:
        return sum(1 for _ in maps)


def test_mapping_use_reads_the_limit_and_this_process_maps(tmp_path):
    (tmp_path / "sys/vm").mkdir(parents=True)
    (tmp_path / "self").mkdir()
    (tmp_path / "sys/vm/max_map_count").write_text("200\n")
    (tmp_path / "self/maps").write_text("".join(f"region {i}\n" for i in range(50)))
    assert mapping_use(tmp_path) == 0.25
    (tmp_path / "sys/vm/max_map_count").write_text("not a number")
    assert mapping_use(tmp_path) is None
    assert mapping_use(tmp_path / "missing") is None
    assert 0.0 < mapping_use() < 1.0  # this Linux process


@pytest.fixture()
def llm(tiny_gguf) -> LLM:
    return LLM(str(tiny_gguf), weights="int8", max_num_seqs=4, max_model_len=128)


def test_near_the_limit_compiled_steps_are_dropped_and_unmapped(llm, monkeypatch):
    short, long = [5, 77, 120, 3], list(range(3, 43))  # two prefill token buckets
    expected = llm.generate(short, GREEDY)[0].token_ids
    runner = llm.engine.runner
    compiled = runner.num_compiled()
    assert llm.generate(short, GREEDY)[0].token_ids == expected
    assert runner.num_compiled() == compiled  # cached: nothing recompiles
    gc.collect()
    before = _regions()

    monkeypatch.setattr(runner_module, "mapping_use", lambda: 0.9)
    llm.generate([9, 8, 7, 6, 5, 4, 3, 2, 1, 10, 11, 12, 13, 14, 15, 16, 17, 18], GREEDY)
    assert llm.generate(short, GREEDY)[0].token_ids == expected
    compiled = runner.num_compiled()  # too few shapes held to be worth dropping: nothing went
    assert llm.generate(short, GREEDY)[0].token_ids == expected
    assert runner.num_compiled() == compiled
    monkeypatch.setattr(runner_module, "MIN_DROP", 1)  # the tiny run holds few shapes
    llm.generate(long, GREEDY)  # a new shape: every compiled step is dropped first
    gc.collect()
    assert _regions() < before  # the dropped executables' code is unmapped
    monkeypatch.setattr(runner_module, "mapping_use", lambda: 0.1)
    assert llm.generate(short, GREEDY)[0].token_ids == expected
    assert runner.num_compiled() > compiled  # the short prompt's shapes compiled again


def test_background_warmup_stops_near_the_limit(tiny_gguf, monkeypatch):
    llm = LLM(str(tiny_gguf), weights="int8", max_num_seqs=4, max_model_len=128)
    engine = llm.engine
    engine.warm_in_background()
    assert engine.warmup_total > 2
    monkeypatch.setattr(engine_module, "mapping_use", lambda: 0.1)
    assert engine.warm_one() and engine.warmup_done == 1
    monkeypatch.setattr(engine_module, "mapping_use", lambda: 0.7)
    assert not engine.warm_one()
    assert engine.warmup_done == engine.warmup_total == 1
    assert engine.runner.compiled_at_warmup is not None
    out = llm.generate([5, 77, 120, 3], GREEDY)[0]  # the rest compile on first use
    assert len(out.token_ids) == 6
