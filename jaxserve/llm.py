"""The Python API for notebooks and scripts: `LLM(...).generate(...)` and `.chat(...)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from jaxserve.config import WeightFormat
from jaxserve.engine import Engine, EngineConfig, SchedulerConfig
from jaxserve.engine.admission import max_pages_per_row, num_pages_for
from jaxserve.engine.speculation import SpeculativeConfig
from jaxserve.kernels import resolve_mode, resolve_weights
from jaxserve.loading.control_vector import load_control_vector
from jaxserve.loading.loader import open_model
from jaxserve.loading.lora import load_lora
from jaxserve.loading.pull import DEFAULT_MODEL, cache_dir, resolve_model
from jaxserve.models.build import build_model
from jaxserve.outputs import RequestOutput
from jaxserve.runtime.compile_cache import enable_compilation_cache
from jaxserve.runtime.distributed import Broadcaster, device_count, is_leader, process_count
from jaxserve.runtime.draft import draft_runner
from jaxserve.runtime.kv_cache import kv_format_for
from jaxserve.runtime.parallel import ParallelConfig, check_heads, make_mesh, prepare
from jaxserve.runtime.runner import ModelRunner
from jaxserve.sampling.chain import LogitsHook
from jaxserve.sampling_params import SamplingParams
from jaxserve.text.chat_template import ChatTemplate
from jaxserve.text.tokenizer import encode_prompt

Prompt = str | Sequence[int]
Message = dict[str, Any]

# Template variables the renderer sets itself; a request's chat_template_kwargs may not.
RESERVED_TEMPLATE_NAMES = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools"}
)


def _is_single_prompt(prompts: Prompt | Sequence[Prompt]) -> bool:
    return isinstance(prompts, str) or (
        len(prompts) > 0 and all(isinstance(t, int) for t in prompts)  # type: ignore[arg-type]
    )


class LLM:
    """A model loaded for offline generation.

    model: a known model name (pulled on first use, e.g. "smollm2-135m"), a path to a `.gguf`, or
        a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json).
    weights: "int8" (per-32-block scales), "bf16" or "f32" (exact dequantized weights); "auto":
        bf16 on TPU/GPU (K/V cached in bf16 too), int8 on CPU.
    max_model_len: context per request (default: the model's, capped at 4096).
    kv_cache_bytes: memory for the paged KV cache (default 512 MiB); the page pool is sized
        from it.
    max_num_seqs / max_num_batched_tokens / prefill_chunk / max_prefill_rows: rows and tokens
        per engine step (default 64 decode rows: a step of 64 rows yields more tokens per second
        than two of 32 here, see experiments/RESULTS.md).
    decode_steps: tokens each decode row generates on device per step (k).
    max_waiting: queued requests at most; more are refused with `QueueFullError`.
    enable_prefix_caching: reuse cached K/V pages of shared prompt prefixes.
    compilation_cache_dir: persistent XLA cache (default `<model cache>/xla`; "" turns it off).
    warmup: compile every bucket now (True), or "background": one at a time whenever the engine
        is idle (a server does: it answers at once, and a request compiles the buckets it
        needs on first use); False: on first use only (notebooks).
    logits_hook: a pure jax function `(logits [B, V], row_state) -> logits` compiled into the
        sampler chain after the token restrictions (logit_bias, allowed ids, bad words,
        min_tokens) and before the ordered stages; `row_state` is a
        `jaxserve.sampling.tensors.RowState` (positions, prompt lengths, token counts, ...).
    grammar_states: capacity of the on-device tables of regular constraints (regex, choice,
        bounded JSON schemas), which then run k tokens per step with no host round trip; other
        constraints, and any beyond the capacity, are masked from the host one token per step.
    kernels: attention, int8 matmuls and the grammar bitmask as Pallas kernels ("pallas"), their
        pure-jnp references ("reference") or the kernels in interpret mode ("interpret", slow;
        for checking them on CPU); "auto" takes Pallas on TPU/GPU and the references on CPU.
    tensor_parallel / data_parallel: shard the model over a (data, model) mesh of that many
        devices (`jaxserve.runtime.parallel`): heads and MLP columns split over `model`, each
        step's rows over `data`. Across processes (`jaxserve.runtime.distributed.initialize`
        first), the mesh spans every process's devices; process 0 drives the engine and the
        others run
        `jaxserve.runtime.distributed.follow(llm.engine.runner)`.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        weights: WeightFormat | Literal["auto"] = "auto",
        max_model_len: int | None = EngineConfig.max_model_len,
        kv_cache_bytes: int = EngineConfig.kv_cache_bytes,
        max_num_seqs: int = SchedulerConfig.max_num_seqs,
        max_num_batched_tokens: int = SchedulerConfig.max_num_batched_tokens,
        prefill_chunk: int = SchedulerConfig.prefill_chunk,
        max_prefill_rows: int = SchedulerConfig.max_prefill_rows,
        decode_steps: int = SchedulerConfig.decode_steps,
        max_waiting: int = SchedulerConfig.max_waiting,
        enable_prefix_caching: bool = EngineConfig.enable_prefix_caching,
        compilation_cache_dir: str | None = EngineConfig.compilation_cache_dir,
        warmup: bool | str = False,
        seed: int = EngineConfig.seed,
        quiet: bool = True,
        logits_hook: LogitsHook | None = None,
        grammar_states: int = EngineConfig.grammar_states,
        kernels: str = "auto",
        tensor_parallel: int = 1,
        data_parallel: int = 1,
        capture_layers: int = EngineConfig.capture_layers,
        steering_slots: int | None = None,
        control_vectors: Mapping[str, str | Path] | None = None,
        speculative: str | SpeculativeConfig | None = None,
        num_speculative_tokens: int = SpeculativeConfig.num_tokens,
        speculative_model: str | None = None,
        speculative_weights: WeightFormat | Literal["auto"] = "auto",
        max_loras: int = EngineConfig.max_loras,
        max_lora_rank: int = EngineConfig.max_lora_rank,
        lora_adapters: Mapping[str, str | Path] | None = None,
    ) -> None:
        control_vectors = dict(control_vectors or {})
        lora_adapters = dict(lora_adapters or {})
        if lora_adapters and not max_loras:
            max_loras = len(lora_adapters)
        if steering_slots is None:
            steering_slots = len(control_vectors)
        config = EngineConfig(
            weights=resolve_weights(weights),
            max_model_len=max_model_len,
            kv_cache_bytes=kv_cache_bytes,
            enable_prefix_caching=enable_prefix_caching,
            compilation_cache_dir=compilation_cache_dir,
            seed=seed,
            grammar_states=grammar_states,
            capture_layers=capture_layers,
            steering_slots=steering_slots,
            max_loras=max_loras,
            max_lora_rank=max_lora_rank,
            speculative=(
                SpeculativeConfig(
                    method=speculative, model=speculative_model, num_tokens=num_speculative_tokens
                )
                if isinstance(speculative, str)
                else speculative
            ),
        )
        cache_path = config.compilation_cache_dir
        enable_compilation_cache(str(cache_dir() / "xla") if cache_path is None else cache_path)
        scheduler_config = SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            prefill_chunk=prefill_chunk,
            max_prefill_rows=max_prefill_rows,
            decode_steps=decode_steps,
            max_waiting=max_waiting,
        )
        self.model_file = open_model(resolve_model(model, quiet=quiet))
        self.parallel = ParallelConfig(tensor_parallel, data_parallel)
        mode = resolve_mode(kernels)
        kv_format = kv_format_for(config.weights, mode)
        file_config = dataclasses.replace(self.model_file.config, kernels=mode, kv_format=kv_format)
        check_heads(file_config, tensor_parallel)
        if process_count() > 1 and self.parallel.num_devices != device_count():
            raise ValueError(
                f"{process_count()} processes hold {device_count()} devices: tensor_parallel x "
                f"data_parallel must use all of them, got {self.parallel.num_devices}"
            )
        mesh = None if self.parallel.is_single else make_mesh(self.parallel)
        if mesh is not None and config.max_loras:
            raise ValueError("LoRA adapters are not supported with tensor or data parallel yet")
        self.tokenizer = self.model_file.tokenizer()
        self.template = ChatTemplate(
            self.tokenizer.chat_template, architecture=file_config.architecture
        )
        loaded = self.model_file.load_weights(
            config.weights, cache=self._converted_cache(config.weights)
        )
        self.config, loaded = prepare(file_config, loaded, tensor_parallel)
        max_len = min(config.max_model_len or 4096, self.config.max_position)
        page_bytes = ModelRunner.bytes_per_page(self.config, config.page_size)
        runner = ModelRunner(
            build_model(self.config, loaded),
            self.config,
            num_pages=num_pages_for(config.kv_cache_bytes, page_bytes),
            page_size=config.page_size,
            max_pages_per_row=max_pages_per_row(max_len, config.page_size),
            seed=seed,
            hook=logits_hook,
            grammar_states=config.grammar_states,
            token_bytes=[self.tokenizer.token_bytes(i) for i in range(self.tokenizer.vocab_size)],
            mesh=mesh,
            capture_slots=config.capture_layers,
            steering_slots=config.steering_slots,
            lora_slots=config.max_loras,
            lora_rank=config.max_lora_rank,
            verify_width=0 if config.speculative is None else config.speculative.num_tokens + 1,
            verify_rows=0 if config.speculative is None else config.speculative.max_rows,
        )
        self.is_leader = is_leader()
        if process_count() > 1 and self.is_leader:
            runner.mirror = Broadcaster()
        if warmup not in (True, False, "background"):
            raise ValueError(f"warmup must be True, False or 'background', not {warmup!r}")
        if warmup == "background" and process_count() > 1:
            warmup = True  # followers mirror the leader's steps: warm up before serving
        if warmup is True and self.is_leader:  # followers run the leader's warm-up as it sends it
            runner.warmup(
                max_rows=scheduler_config.max_num_seqs,
                max_prefill_rows=scheduler_config.max_prefill_rows,
                max_chunk=scheduler_config.prefill_chunk,
                max_batched_tokens=scheduler_config.max_num_batched_tokens,
                num_steps=scheduler_config.decode_steps,
            )
        spec = config.speculative
        drafts = None
        if spec is not None and spec.method == "draft":
            if mesh is not None:
                raise ValueError("a draft model is not supported with tensor or data parallel")
            drafts = draft_runner(
                spec.model,
                weights=resolve_weights(speculative_weights),
                kernels=mode,
                target=self.config,
                tokenizer=self.tokenizer,
                num_pages=runner.num_pages,
                page_size=config.page_size,
                max_pages_per_row=max_pages_per_row(max_len, config.page_size),
                quiet=quiet,
            )
            if warmup is True:
                drafts.warmup(
                    max_rows=spec.max_rows,
                    max_prefill_rows=1,
                    max_chunk=scheduler_config.prefill_chunk,
                    max_batched_tokens=scheduler_config.prefill_chunk,
                    num_steps=spec.num_tokens + 1,
                )
        self.engine = Engine(
            self.tokenizer,
            runner,
            config,
            scheduler_config,
            max_model_len=max_len,
            draft_runner=drafts,
        )
        for name, path in control_vectors.items():
            self.load_control_vector(name, path)
        for name, path in lora_adapters.items():
            self.load_lora(name, path)
        if warmup == "background":
            self.engine.warm_in_background()

    def load_control_vector(self, name: str, path: str | Path) -> None:
        """Load a llama.cpp control-vector GGUF under `name` (for `SamplingParams.steering`)."""
        directions = load_control_vector(
            path, num_layers=self.config.num_layers, hidden_size=self.config.hidden_size
        )
        self.engine.research.add_control_vector(name, directions)

    def load_lora(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter (a PEFT folder or a llama.cpp LoRA GGUF) under `name`, for
        `SamplingParams(lora=name)`; it takes a free slot of the engine's `max_loras`."""
        self.engine.adapters.load(name, load_lora(path, self.config))

    def unload_lora(self, name: str) -> None:
        """Free an adapter's slot (ValueError while unfinished requests use it)."""
        try:
            self.engine.adapters.unload(name)
        except KeyError:
            raise ValueError(f"no LoRA adapter named {name!r} is loaded") from None

    def _converted_cache(self, weights: WeightFormat) -> Path | None:
        """Pulled models keep their converted weights beside them (a faster next start)."""
        if weights == "bf16":  # npz has no bfloat16; accelerator hosts convert fast
            return None
        root = cache_dir().resolve()
        path = self.model_file.path.resolve()
        return path.parent / "converted" if root in path.parents else None

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        """`text`'s ids as llama.cpp's `llama_tokenize` gives them; `parse_special=True` gives
        the ids `generate` uses for a text prompt (special-token texts become their ids)."""
        return self.tokenizer.encode(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self.tokenizer.decode(token_ids)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        lora: str | None = None,
    ) -> list[RequestOutput]:
        """Continue each prompt (text, or token ids); one output per prompt, in order (with
        `n > 1`, the prompt's n outputs follow each other, by `index`). `params` is one
        `SamplingParams` for every prompt, or a list of one per prompt; `lora` sets every
        prompt's adapter (`SamplingParams.lora`)."""
        batch = [prompts] if _is_single_prompt(prompts) else list(prompts)  # type: ignore[list-item]
        if params is None or isinstance(params, SamplingParams):
            per_prompt = [params or SamplingParams()] * len(batch)
        else:
            per_prompt = list(params)
            if len(per_prompt) != len(batch):
                raise ValueError(
                    f"params: {len(per_prompt)} SamplingParams for {len(batch)} prompts "
                    "(give one, or one per prompt)"
                )
            if not all(isinstance(p, SamplingParams) for p in per_prompt):
                raise TypeError("params: every entry must be a SamplingParams")
        if lora is not None:
            per_prompt = [dataclasses.replace(p, lora=lora) for p in per_prompt]
        requests = []
        try:
            for prompt, prompt_params in zip(batch, per_prompt, strict=True):
                requests.append(self._add(prompt, prompt_params))
        except Exception:
            for request in requests:
                self.engine.abort(request)
            raise
        while self.engine.has_unfinished():
            self.engine.step()
        return [seq.output for r in requests for seq in r.group]

    def beam_search(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        beam_width: int = 4,
        max_tokens: int = 16,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        n: int | None = None,
        params: SamplingParams | None = None,
    ) -> list[list[RequestOutput]]:
        """Beam search over each prompt: per prompt, the `n` (default: `beam_width`) best
        finished beams, best first, each with its `beam_score` and `cumulative_logprob`.
        `params` adds what else the beams follow (a constraint, `ignore_eos`, `logprobs`...);
        see `SamplingParams` (beam search) for the rules."""
        search = dataclasses.replace(
            params or SamplingParams(),
            use_beam_search=True,
            beam_width=beam_width,
            n=beam_width if n is None else n,
            max_tokens=max_tokens,
            length_penalty=length_penalty,
            early_stopping=early_stopping,
        )
        outs = self.generate(prompts, search)
        return [outs[i : i + search.n] for i in range(0, len(outs), search.n)]

    def embed(self, texts: Prompt | Sequence[Prompt]) -> np.ndarray:
        """Embeddings of texts (tokenized with the model's BOS) or token-id lists:
        `[len(texts), hidden]` float32, one row per input (a lone prompt gives one row).

        An embedding is the mean of the input's final hidden states (after the final norm) over
        its tokens, L2-normalized, so a dot product of two is their cosine similarity."""
        items = [texts] if _is_single_prompt(texts) else list(texts)  # type: ignore[list-item]
        ids = [encode_prompt(self.tokenizer, t) if isinstance(t, str) else list(t) for t in items]
        return self.engine.embed(ids)

    def chat(
        self,
        messages: Sequence[Message] | Sequence[Sequence[Message]],
        params: SamplingParams | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> list[RequestOutput]:
        """Render each conversation with the model's chat template, then generate."""
        single = len(messages) > 0 and isinstance(messages[0], dict)
        conversations = [messages] if single else list(messages)
        prompts = [
            self.render_chat(c, add_generation_prompt=add_generation_prompt) for c in conversations
        ]
        return self.generate(
            [encode_prompt(self.tokenizer, p, add_special=False) for p in prompts],
            params,
        )

    def render_chat(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> str:
        """The prompt text of `messages`; `tools` (OpenAI's shape) go to the template as is, and
        `template_kwargs` as further variables (e.g. `enable_thinking`); a name the renderer
        sets itself (`messages`, `tools`, ...) is a ValueError."""
        extra = dict(template_kwargs or {})
        reserved = sorted(set(extra) & RESERVED_TEMPLATE_NAMES)
        if reserved:
            raise ValueError(f"chat_template_kwargs may not set {', '.join(reserved)}")
        return self.template.render(
            list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self.tokenizer.bos_text,
            eos_token=self.tokenizer.eos_text,
            tools=tools,
            **extra,
        )

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one prompt's continuation as it is generated."""
        request = self._add(prompt, params or SamplingParams())
        while not request.finished:
            for event in self.engine.step():
                if event.output is request.output and event.delta:
                    yield event.delta

    def _add(self, prompt: Prompt, params: SamplingParams):
        if isinstance(prompt, str):
            ids = encode_prompt(self.tokenizer, prompt)
            return self.engine.add_request(ids, params, prompt=prompt)
        return self.engine.add_request(list(prompt), params)


__all__ = ["LLM"]
