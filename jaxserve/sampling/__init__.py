"""The sampler chain (device side): small pure `logits [B, V] -> logits` ops, then one draw.

- `tensors.py`: the per-row arrays a step takes (`SamplingTensors`) and carries (`RowState`).
- `rows.py`: host side (numpy only): `SamplingParams` of each row -> those arrays.
- `restrict.py`: logit_bias, token bitmask (allowed ids, grammar), bad words, min_tokens.
- `penalties.py`: token counts, repetition/presence/frequency penalties, DRY.
- `filters.py`: top_n_sigma, top_k, typical_p, top_p, min_p, XTC, (dynamic) temperature.
- `mirostat.py`: Mirostat v1 and v2 with per-row state.
- `draw.py`: per-row keys, the draw, logprobs.
- `chain.py`: the composition, in each row's order, without recompiles.
"""
