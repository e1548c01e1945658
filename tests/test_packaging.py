"""One installed namespace, and host-only modules that never import jax."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_root_folders_are_jaxserve_subpackages():
    import jaxserve.api
    import jaxserve.grammar
    import jaxserve.kernels

    for module, folder in (
        (jaxserve.kernels, "kernels"),
        (jaxserve.grammar, "grammar"),
        (jaxserve.api, "api"),
    ):
        assert Path(module.__file__).resolve().parent == (ROOT / folder).resolve()


def _modules_under(package: str) -> list[str]:
    """Every module of an installed package, found from its files."""
    import importlib

    root = Path(importlib.import_module(package).__file__).parent
    names = [package]
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            names.append(".".join((package, *parts)))
    return names


HOST_PACKAGES = ("jaxserve.engine", "jaxserve.grammar", "jaxserve.text")
HOST_MODULES = (
    "jaxserve",
    "jaxserve.config",
    "jaxserve.errors",
    "jaxserve.outputs",
    "jaxserve.sampling_params",
    "jaxserve.sampling.rows",
    "jaxserve.loading.pull",
    "jaxserve.loading.gguf_meta",
    "jaxserve.loading.weights",
    "jaxserve.api.async_engine",
)


def test_host_modules_do_not_import_jax():
    """The host/device seam: the engine, grammar and text packages (every module of them) and
    the async engine never pull in jax, flax or the device side, even indirectly."""
    host = [m for p in HOST_PACKAGES for m in _modules_under(p)] + list(HOST_MODULES)
    assert "jaxserve.engine.scheduler" in host and "jaxserve.text.tokenizer_hf" in host
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in host)
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax')"
        + " or m.startswith(('jaxserve.runtime', 'jaxserve.models', 'jaxserve.kernels')))\n"
        + "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_every_package_folder_is_declared():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(project["packages"])
    roots = {name: ROOT / folder for name, folder in project["package-dir"].items()}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    assert found <= declared, sorted(found - declared)
