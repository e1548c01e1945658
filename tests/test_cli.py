"""The `jaxserve` command line on the tiny GGUF."""

from __future__ import annotations

from jaxserve.cli import main


def test_info_prints_config_types_and_parameters(tiny_gguf, capsys):
    assert main(["info", str(tiny_gguf)]) == 0
    out = capsys.readouterr().out
    assert "num_layers: 2" in out and "Q4_K" in out and "parameters" in out and "MiB" in out
    assert "architecture: llama" in out
    assert "features: rope interleaved, GQA (2 q heads per kv head)" in out


def test_info_reads_a_hugging_face_folder(tmp_path, capsys):
    from tests.tiny_hf import write_tiny_hf

    folder = write_tiny_hf(tmp_path / "qwen3", "qwen3-mqa")
    assert main(["info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "architecture: qwen3" in out and "F32" in out and "tokenizer.json" in out
    assert "rope neox" in out and "MQA" in out and "qk norm" in out


def test_generate_streams_the_continuation(tiny_gguf, capsys):
    args = ["generate", str(tiny_gguf), "hello world", "--max-tokens", "6", "--temperature", "0"]
    assert main(args + ["--weights", "f32"]) == 0
    out = capsys.readouterr().out
    from jaxserve import LLM, SamplingParams

    expected = (
        LLM(str(tiny_gguf), weights="f32")
        .generate("hello world", SamplingParams(max_tokens=6, temperature=0.0))[0]
        .text
    )
    assert out == "hello world" + expected + "\n"


def test_chat_reads_turns_from_stdin(tiny_gguf, capsys, monkeypatch):
    lines = iter(["hi there", ""])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", str(tiny_gguf), "--max-tokens", "4", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.count("\n") >= 1


def test_unknown_model_is_a_clear_error(capsys):
    assert main(["generate", "no-such-model", "hi"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and "smollm2-135m" in err


def test_serve_takes_the_research_flags(monkeypatch, tmp_path):
    import pytest

    import jaxserve.api.serve as serve_module

    seen = {}

    def fake_loader(model, *, max_queue, **kwargs):
        seen.update(kwargs)
        return lambda: None

    monkeypatch.setattr(serve_module, "llm_loader", fake_loader)
    monkeypatch.setattr(serve_module, "serve", lambda *a, **k: 0)
    args = ["serve", "x.gguf", "--capture-layers", "4", "--control-vector", "happy=h.gguf"]
    assert main(args) == 0
    assert seen["capture_layers"] == 4 and seen["steering_slots"] is None
    assert seen["control_vectors"] == {"happy": "h.gguf"}
    with pytest.raises(SystemExit, match="NAME=PATH"):
        main(["serve", "x.gguf", "--control-vector", "h.gguf"])


def test_serve_takes_several_models_and_lora_flags(monkeypatch, capsys):
    import jaxserve.api.serve as serve_module

    loaded, served = [], {}

    def fake_loader(model, *, max_queue, **kwargs):
        loaded.append((model, kwargs))
        return lambda: None

    def fake_serve(config, load, **kwargs):
        served.update(config=config, **kwargs)
        return 0

    monkeypatch.setattr(serve_module, "llm_loader", fake_loader)
    monkeypatch.setattr(serve_module, "serve", fake_serve)
    args = ["serve", "a.gguf", "b.gguf", "--served-model-name", "x", "--served-model-name", "y"]
    args += ["--lora", "sql=./sql", "--max-lora-rank", "8", "--admin-key", "adm"]
    assert main(args) == 0
    assert [m for m, _ in loaded] == ["a.gguf", "b.gguf"]
    assert loaded[0][1]["lora_adapters"] == {"sql": "./sql"}
    assert loaded[0][1]["max_lora_rank"] == 8
    config = served["config"]
    assert config.model_names == ("x",) and config.admin_key == "adm"
    assert [(names, source) for names, source, _ in served["others"]] == [(("y",), "b.gguf")]
    assert served["loader"] is not None
    assert main(["serve", "a.gguf", "b.gguf", "--served-model-name", "x"]) == 2
    assert "once per model" in capsys.readouterr().err
    assert main(["serve", "a.gguf", "--served-model-name", "x", "--served-model-name", "z"]) == 0
    assert served["config"].model_names == ("x", "z")  # one model: aliases
