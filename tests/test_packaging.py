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


def test_host_modules_do_not_import_jax():
    host = [
        "jaxserve",
        "jaxserve.pull",
        "jaxserve.tokenizer",
        "jaxserve.tokenizer_hf",
        "jaxserve.detokenizer",
        "jaxserve.chat_template",
        "jaxserve.request",
        "jaxserve.page_allocator",
        "jaxserve.sampling_params",
        "jaxserve.sampling.rows",
        "jaxserve.weights",
        "jaxserve.grammar",
    ]
    code = "import sys\n" + "".join(f"import {m}\n" for m in host) + "print('jax' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


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
