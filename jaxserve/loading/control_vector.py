"""llama.cpp control vectors: GGUF files of steering directions, one per layer.

A control-vector GGUF (`general.architecture = "controlvector"`, written by llama.cpp's
`cvector-generator` and by repeng) holds f32 tensors `direction.{N}` of `hidden_size` values;
llama.cpp adds `direction.N` (times the file's scale) to the residual stream after layer N
(0-based), and layer 0 has none. `jaxserve` steers at the same place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

from jaxserve.errors import GGUFError

ARCHITECTURE = "controlvector"


def load_control_vector(
    path: str | Path, *, num_layers: int, hidden_size: int
) -> dict[int, np.ndarray]:
    """{layer: direction [hidden_size] f32} of a control-vector GGUF, checked against the model."""
    try:
        reader = GGUFReader(str(path))
    except (OSError, ValueError) as error:
        raise GGUFError(f"{path}: not a readable GGUF file ({error})") from None
    arch = reader.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[-1]).decode() != ARCHITECTURE:
        raise GGUFError(f"{path}: not a control vector (general.architecture != {ARCHITECTURE!r})")
    out: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            continue
        layer = int(index)
        if not 0 < layer < num_layers:
            raise GGUFError(
                f"{path}: {tensor.name} is outside the model's layers 1..{num_layers - 1}"
            )
        data = np.asarray(tensor.data, np.float32).reshape(-1)
        if data.shape != (hidden_size,):
            raise GGUFError(
                f"{path}: {tensor.name} has {data.size} values, the model's hidden size is "
                f"{hidden_size}"
            )
        out[layer] = data
    if not out:
        raise GGUFError(f"{path}: no direction.N tensors")
    return out


def write_control_vector(
    path: str | Path, directions: dict[int, np.ndarray], *, model_hint: str = "llama"
) -> Path:
    """Write `directions` ({layer >= 1: [hidden_size]}) as llama.cpp's control-vector GGUF."""
    writer = GGUFWriter(str(path), ARCHITECTURE)
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_int32("controlvector.layer_count", len(directions))
    for layer, vector in sorted(directions.items()):
        writer.add_tensor(f"direction.{layer}", np.asarray(vector, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)
