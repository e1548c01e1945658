"""Per-request sampling settings (host side), validated on construction.

Field names follow vLLM and llama.cpp's server, so requests written for either carry over. Every
stage of the sampler chain is off at its default value; a row with a stage off passes through it
unchanged on device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MAX_LOGPROBS = 20  # matches the device's static top-k width
MAX_N = 16
MAX_BEAM_WIDTH = 10  # 2 x width candidates per beam fit the device's top-20 logprobs
MAX_BAD_WORDS = 16  # banned token sequences per request
MAX_BAD_WORD_TOKENS = 8  # tokens per banned sequence
MAX_DRY_BREAKERS = 16
MAX_LOGIT_BIAS = 300  # entries per request (OpenAI's limit)
LENS_TOP_K = 10  # the device's static top-k width of the logit lens
HIDDEN_POSITIONS = ("last", "generated", "all")

# Orderable stages of the chain, by llama.cpp's names; `samplers` picks a subset and an order.
SAMPLER_STAGES = (
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typ_p",
    "top_p",
    "min_p",
    "xtc",
    "temperature",
)
DEFAULT_SAMPLERS = SAMPLER_STAGES
_STAGE_ALIASES = {"typical_p": "typ_p", "typical": "typ_p", "penalty": "penalties"}

LogprobsMode = Literal["raw", "processed"]
CONSTRAINT_FIELDS = ("json_schema", "json_object", "grammar", "regex", "choice")


def _fail(name: str, rule: str, value: object) -> None:
    raise ValueError(f"{name} must be {rule}, got {value!r}")


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (lo < value if lo_open else lo <= value) and value <= hi
    if not ok:
        left = "(" if lo_open else "["
        _fail(name, f"a number in {left}{lo}, {hi}]", value)


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        _fail(name, f"an integer in [{lo}, {hi}]", value)


@dataclass(frozen=True)
class SamplingParams:
    """How to continue one prompt.

    Length and stopping:
      max_tokens: tokens to generate (0 = only score the prompt, e.g. with `prompt_logprobs`).
      min_tokens: end-of-generation and stop ids are masked until this many tokens exist.
      stop / stop_token_ids: strings / extra ids that end generation.
      include_stop_str_in_output: keep the stop string that ended the text (dropped by default).
      ignore_eos: keep going past end-of-generation tokens.
    Text:
      skip_special_tokens: leave special tokens (e.g. `<|im_end|>`) out of the text (default);
        False writes them in.
    Token restrictions (applied first, in this order):
      logit_bias: {token_id: bias in [-100, 100]} added to the logits (-100 bans, +100 forces).
      allowed_token_ids: only these ids may be sampled.
      bad_words: strings whose token sequences may never be completed.
    Chain stages (run in `samplers` order; each is off at its default):
      penalties: repetition_penalty (> 1 discourages tokens already in the prompt or output:
        positive logits divided, negative multiplied), presence_penalty and frequency_penalty
        (subtract once / per occurrence, over generated tokens, OpenAI's semantics);
        repeat_last_n limits all three to the last n tokens (-1 = the whole sequence).
      dry: "don't repeat yourself": a token that would extend a repeat of an earlier sequence
        longer than dry_allowed_length gets dry_multiplier * dry_base ** (length - allowed)
        subtracted; dry_sequence_breakers end a match; dry_penalty_last_n bounds the scan.
      top_n_sigma: keep logits within n standard deviations of the max (<= 0 = off).
      top_k (<= 0 = off), typ_p (typical_p, 1 = off), top_p (1 = off), min_p (0 = off).
      xtc: with probability xtc_probability, remove every token above xtc_threshold but the least
        likely of them.
      temperature: 0 is greedy; dynatemp_range > 0 makes it entropy-dependent in
        [temperature - range, temperature + range], shaped by dynatemp_exponent.
    mirostat: 1 or 2 replaces the final truncation with Mirostat (target surprise mirostat_tau,
      learning rate mirostat_eta); its state is carried per sequence across steps.
    seed: per-request seed; the same seed and prompt give the same tokens whatever the batch.
    n: sequences sampled for the prompt (one prefill; sequence i > 0 draws from its own seed).
    logprobs: number of top alternatives to return with each generated token's logprob.
    logprobs_mode: "raw" (the model's distribution, OpenAI's semantics) or "processed" (after the
      chain, before the draw).
    prompt_logprobs: number of top alternatives to return at each prompt position after the first,
      beside the logprob of the actual prompt token.
    Constraints (at most one; the output is a complete string of the language, then end of
    generation): json_schema (a JSON Schema, as a mapping or JSON text), json_object (any JSON
    value), grammar (GBNF, llama.cpp's dialect), regex (full match), choice (one of the strings).
    grammar_triggers: with `grammar`, a lazy constraint: the text is free until one of these
      strings is generated; from its first character on, the output must follow the grammar
      (tool calls with tool_choice "auto").
    unbounded_numbers: with json_schema / json_object, numbers without bounds of their own are
      not capped (by default integers stay in the signed 64-bit range and other numbers within
      20 digits each side of the point, so a model cannot write digits forever).
    token_healing: back the prompt's last token off and make the output start with its text, so
      a prompt cut inside a word (or after `http:`) continues as the model would have tokenized
      the whole; the output text then begins with the removed characters. Not with a
      constraint; prompts whose last token is a control token or a partial UTF-8 character are
      left as they are.
    Research hooks (the engine must be started with capture slots / steering slots for the
    first three; `jaxserve.research` says what each returns):
      return_hidden_states: layers whose output residual stream to return (0-based, after that
        layer and its steering; negative counts from the end), plus the final norm's output, as
        `RequestOutput.hidden_states`; hidden_positions: "last" (the last prompt token's, whose
        logits drew the first token), "generated" (each position a generated token was drawn
        at) or "all" (every prompt position and every generated one).
      logit_lens: layers whose output, through the final norm and the output head, gives the
        top `logit_lens_top_k` tokens and logprobs at every generated token.
      steering: {layer: vector (hidden_size floats) or the name of a loaded control vector},
        or one control vector's name (all its layers); times steering_scale, added to the
        residual stream after those layers, for this request only.
      return_uncertainty: per generated token, the entropy of the model's distribution and of
        the processed one, and the top-2 logprob margin (`RequestOutput.uncertainty`).
    speculative: False keeps this request out of speculative decoding (when the engine has it;
      its tokens are the same either way, only the number of forward passes changes).
    lora: the name of a LoRA adapter loaded into the engine (`LLM.load_lora`), applied to this
      request only, its output scaled by lora_scale (0 turns it off).
    Beam search (`jaxserve.engine.beam`): use_beam_search keeps the beam_width (default: n)
      best partial sequences by summed logprob, each step extending every beam by its best
      tokens; the n best finished beams are returned, ranked by sum / length ** length_penalty.
      early_stopping: True ends once beam_width beams finished; False (default) once no running
      beam can beat the finished ones at its current length; "never" at max_tokens or once no
      running beam can beat them at any length (Hugging Face `transformers`' rules). Tokens
      are scored on the distribution the chain draws from (constraints, bias, penalties,
      temperature applied; with none of them, the model's own); `logprobs` reports that one.
    """

    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    top_n_sigma: float = 0.0
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_last_n: int = -1
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = -1
    dry_sequence_breakers: tuple[str, ...] = ("\n", ":", '"', "*")
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    logit_bias: Mapping[int, float] | None = None
    allowed_token_ids: tuple[int, ...] | None = None
    bad_words: tuple[str, ...] = ()
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    logprobs_mode: LogprobsMode = "raw"
    prompt_logprobs: int | None = None
    json_schema: Mapping[str, Any] | bool | str | None = None
    json_object: bool = False
    grammar: str | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar_triggers: tuple[str, ...] = ()
    unbounded_numbers: bool = False
    token_healing: bool = False
    return_hidden_states: tuple[int, ...] | None = None
    hidden_positions: str = "last"
    logit_lens: tuple[int, ...] | None = None
    logit_lens_top_k: int = 5
    steering: Mapping[int, str | tuple[float, ...]] | str | None = None
    steering_scale: float = 1.0
    return_uncertainty: bool = False
    speculative: bool = True
    lora: str | None = None
    lora_scale: float = 1.0
    use_beam_search: bool = False
    beam_width: int | None = None
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def __post_init__(self) -> None:
        if self.choice is not None:
            if isinstance(self.choice, str | Mapping) or not _is_sequence(self.choice):
                _fail("choice", "a list of strings", self.choice)
            object.__setattr__(self, "choice", tuple(self.choice))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if isinstance(self.bad_words, str):
            object.__setattr__(self, "bad_words", (self.bad_words,))
        if isinstance(self.dry_sequence_breakers, str):
            object.__setattr__(self, "dry_sequence_breakers", (self.dry_sequence_breakers,))
        if isinstance(self.grammar_triggers, str):
            object.__setattr__(self, "grammar_triggers", (self.grammar_triggers,))
        listed = ("stop", "stop_token_ids", "bad_words", "dry_sequence_breakers", "samplers")
        for name in (*listed, "grammar_triggers"):
            if isinstance(getattr(self, name), Mapping) or not _is_sequence(getattr(self, name)):
                _fail(name, "a list", getattr(self, name))
        if self.allowed_token_ids is not None and not _is_sequence(self.allowed_token_ids):
            _fail("allowed_token_ids", "a list of token ids", self.allowed_token_ids)
        if isinstance(self.samplers, str):
            object.__setattr__(self, "samplers", tuple(self.samplers.replace(",", ";").split(";")))
        for name in (*listed, "grammar_triggers"):
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))
        if self.allowed_token_ids is not None:
            object.__setattr__(self, "allowed_token_ids", tuple(self.allowed_token_ids))
        if self.logit_bias is not None:
            bias = self.logit_bias
            if not isinstance(bias, Mapping):
                _fail("logit_bias", "a mapping of token id to bias", bias)
            object.__setattr__(self, "logit_bias", {_token_id(k): v for k, v in bias.items()})
        if self.top_k == -1:  # vLLM's spelling of "off"
            object.__setattr__(self, "top_k", 0)
        object.__setattr__(self, "samplers", tuple(_stage(s) for s in self.samplers))
        for name in ("return_hidden_states", "logit_lens"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str | Mapping) or not _is_sequence(value):
                    _fail(name, "a list of layer indices", value)
                object.__setattr__(self, name, tuple(value))
        if self.steering is not None and not isinstance(self.steering, str):
            if not isinstance(self.steering, Mapping):
                _fail("steering", "a mapping of layer to vector, or a control vector's name", "")
            object.__setattr__(self, "steering", _steering(self.steering))
        self._validate()

    def _validate(self) -> None:
        _check_int("max_tokens", self.max_tokens, 0, 2**31 - 1)
        _check_int("min_tokens", self.min_tokens, 0, 2**31 - 1)
        if self.min_tokens > self.max_tokens:
            _fail("min_tokens", f"at most max_tokens ({self.max_tokens})", self.min_tokens)
        _check_range("temperature", self.temperature, 0.0, 100.0)
        _check_range("dynatemp_range", self.dynatemp_range, 0.0, 100.0)
        _check_range("dynatemp_exponent", self.dynatemp_exponent, 0.0, 100.0, lo_open=True)
        _check_int("top_k", self.top_k, 0, 2**31 - 1)
        _check_range("top_p", self.top_p, 0.0, 1.0, lo_open=True)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        _check_range("typical_p", self.typical_p, 0.0, 1.0, lo_open=True)
        _check_range("top_n_sigma", self.top_n_sigma, -1.0, 100.0)
        _check_range("xtc_probability", self.xtc_probability, 0.0, 1.0)
        _check_range("xtc_threshold", self.xtc_threshold, 0.0, 1.0)
        _check_range("repetition_penalty", self.repetition_penalty, 0.0, 100.0, lo_open=True)
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_int("repeat_last_n", self.repeat_last_n, -1, 2**31 - 1)
        _check_range("dry_multiplier", self.dry_multiplier, 0.0, 100.0)
        _check_range("dry_base", self.dry_base, 1.0, 100.0)
        _check_int("dry_allowed_length", self.dry_allowed_length, 1, 2**31 - 1)
        _check_int("dry_penalty_last_n", self.dry_penalty_last_n, -1, 2**31 - 1)
        if len(self.dry_sequence_breakers) > MAX_DRY_BREAKERS:
            _fail("dry_sequence_breakers", f"at most {MAX_DRY_BREAKERS} strings", "...")
        if any(not isinstance(s, str) or not s for s in self.dry_sequence_breakers):
            _fail("dry_sequence_breakers", "non-empty strings", self.dry_sequence_breakers)
        _check_int("mirostat", self.mirostat, 0, 2)
        _check_range("mirostat_tau", self.mirostat_tau, 0.0, 100.0)
        _check_range("mirostat_eta", self.mirostat_eta, 0.0, 1.0)
        if len(self.logit_bias or {}) > MAX_LOGIT_BIAS:
            _fail(
                "logit_bias", f"at most {MAX_LOGIT_BIAS} entries", f"{len(self.logit_bias)} entries"
            )
        for token, value in (self.logit_bias or {}).items():
            _check_range(f"logit_bias[{token}]", value, -100.0, 100.0)
        if self.allowed_token_ids is not None:
            if not self.allowed_token_ids:
                _fail("allowed_token_ids", "a non-empty list", [])
            for token in self.allowed_token_ids:
                _check_int("allowed_token_ids", token, 0, 2**31 - 1)
        if len(self.bad_words) > MAX_BAD_WORDS:
            _fail("bad_words", f"at most {MAX_BAD_WORDS} strings", "...")
        if any(not isinstance(w, str) or not w for w in self.bad_words):
            _fail("bad_words", "non-empty strings", self.bad_words)
        if len(set(self.samplers)) != len(self.samplers):
            _fail("samplers", "a list without repeats", self.samplers)
        if self.seed is not None:
            _check_int("seed", self.seed, 0, 2**32 - 1)
        _check_int("n", self.n, 1, MAX_N)
        if any(not isinstance(s, str) or not s for s in self.stop):
            _fail("stop", "non-empty strings", self.stop)
        for token in self.stop_token_ids:
            _check_int("stop_token_ids", token, 0, 2**31 - 1)
        for name in (
            "ignore_eos",
            "include_stop_str_in_output",
            "skip_special_tokens",
            "token_healing",
            "unbounded_numbers",
            "speculative",
        ):
            if not isinstance(getattr(self, name), bool):
                _fail(name, "a boolean", getattr(self, name))
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 0, MAX_LOGPROBS)
        if self.logprobs_mode not in ("raw", "processed"):
            _fail("logprobs_mode", "'raw' or 'processed'", self.logprobs_mode)
        self._validate_constraint()
        self._validate_research()
        self._validate_beam()

    def _validate_beam(self) -> None:
        if not isinstance(self.use_beam_search, bool):
            _fail("use_beam_search", "a boolean", self.use_beam_search)
        if self.early_stopping not in (True, False, "never"):
            _fail("early_stopping", "true, false or 'never'", self.early_stopping)
        _check_range("length_penalty", self.length_penalty, -100.0, 100.0)
        if not self.use_beam_search:
            beam = {"beam_width": None, "length_penalty": 1.0, "early_stopping": False}
            for name, default in beam.items():
                if getattr(self, name) != default:
                    _fail(name, "given only with use_beam_search", getattr(self, name))
            return
        if self.beam_width is not None:
            _check_int("beam_width", self.beam_width, 1, MAX_BEAM_WIDTH)
        if self.n > self.width:
            _fail("n", f"at most beam_width ({self.width}) with use_beam_search", self.n)
        _check_int("beam_width", self.width, 1, MAX_BEAM_WIDTH)
        if self.max_tokens < 1:
            _fail("max_tokens", "at least 1 with use_beam_search", self.max_tokens)
        unsupported = {
            "stop": bool(self.stop),
            "prompt_logprobs": self.prompt_logprobs is not None,
            "mirostat": self.mirostat != 0,
            "grammar_triggers": bool(self.grammar_triggers),
            "token_healing": self.token_healing,
            "return_hidden_states": self.return_hidden_states is not None,
            "logit_lens": self.logit_lens is not None,
            "return_uncertainty": self.return_uncertainty,
        }
        for name, given in unsupported.items():
            if given:
                _fail(name, "left unset with use_beam_search", getattr(self, name))

    @property
    def width(self) -> int:
        """Beams kept per step (beam search)."""
        return self.beam_width if self.beam_width is not None else self.n

    def _validate_research(self) -> None:
        for name in ("return_hidden_states", "logit_lens"):
            for layer in getattr(self, name) or ():
                _check_int(name, layer, -(2**15), 2**15)
        if self.hidden_positions not in HIDDEN_POSITIONS:
            rule = " or ".join(map(repr, HIDDEN_POSITIONS))
            _fail("hidden_positions", rule, self.hidden_positions)
        if self.hidden_positions != "last" and self.return_hidden_states is None:
            _fail("hidden_positions", "given only with return_hidden_states", self.hidden_positions)
        _check_int("logit_lens_top_k", self.logit_lens_top_k, 1, LENS_TOP_K)
        if isinstance(self.steering, str) and not self.steering:
            _fail("steering", "a control vector's name or a mapping", self.steering)
        _check_range("steering_scale", self.steering_scale, -1e4, 1e4)
        if self.steering is None and self.steering_scale != 1.0:
            _fail("steering_scale", "given only with steering", self.steering_scale)
        if not isinstance(self.return_uncertainty, bool):
            _fail("return_uncertainty", "a boolean", self.return_uncertainty)
        if self.lora is not None and (not isinstance(self.lora, str) or not self.lora):
            _fail("lora", "a loaded adapter's name", self.lora)
        _check_range("lora_scale", self.lora_scale, -1e4, 1e4)
        if self.lora is None and self.lora_scale != 1.0:
            _fail("lora_scale", "given only with lora", self.lora_scale)

    @property
    def captured_layers(self) -> tuple[int, ...]:
        """The layers a request captures (hidden states and lens), as given, in order."""
        layers = (*(self.return_hidden_states or ()), *(self.logit_lens or ()))
        return tuple(dict.fromkeys(layers))

    def _validate_constraint(self) -> None:
        named = [k for k in CONSTRAINT_FIELDS if getattr(self, k) not in (None, False)]
        if len(named) > 1:
            _fail(named[1], f"not combined with {named[0]} (one constraint per request)", "both")
        if not isinstance(self.json_object, bool):
            _fail("json_object", "a boolean", self.json_object)
        if self.json_schema is not None and not isinstance(self.json_schema, Mapping | bool | str):
            _fail("json_schema", "a JSON Schema object", self.json_schema)
        for name in ("grammar", "regex"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                _fail(name, "a non-empty string", value)
        if self.choice is not None and (
            not self.choice or any(not isinstance(c, str) or not c for c in self.choice)
        ):
            _fail("choice", "a non-empty list of non-empty strings", self.choice)
        if self.unbounded_numbers and not {"json_schema", "json_object"} & set(named):
            _fail("unbounded_numbers", "given only with json_schema or json_object", True)
        if self.token_healing and named:
            _fail("token_healing", f"not combined with {named[0]}", True)
        if self.grammar_triggers:
            if self.grammar is None:
                _fail("grammar_triggers", "given only with grammar", self.grammar_triggers)
            if any(not isinstance(t, str) or not t for t in self.grammar_triggers):
                _fail("grammar_triggers", "non-empty strings", self.grammar_triggers)

    @property
    def constraint(self) -> dict[str, Any] | None:
        """The constraint as a `jaxserve.grammar` spec, or None."""
        for name in CONSTRAINT_FIELDS:
            value = getattr(self, name)
            if value is not None and value is not False:
                spec = {name: list(value) if name == "choice" else value}
                if self.grammar_triggers:
                    spec["triggers"] = list(self.grammar_triggers)
                if self.unbounded_numbers:
                    spec["unbounded_numbers"] = True
                return spec
        return None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 and self.mirostat == 0

    @property
    def uses_history(self) -> bool:
        """Whether the device needs this sequence's past tokens (penalties, DRY, bad words)."""
        return bool(
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.dry_multiplier > 0.0
            or self.bad_words
        )


def _steering(value: Mapping) -> dict[int, str | tuple[float, ...]]:
    """{layer: name or vector}: layer keys may arrive as strings (JSON); vectors as lists."""
    out: dict[int, str | tuple[float, ...]] = {}
    for key, vector in value.items():
        try:
            layer = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"steering keys must be layer indices, got {key!r}") from None
        if isinstance(key, bool) or str(layer) != str(key).strip():
            raise ValueError(f"steering keys must be layer indices, got {key!r}")
        if isinstance(vector, str):
            if not vector:
                _fail(f"steering[{layer}]", "a vector or a control vector's name", vector)
            out[layer] = vector
            continue
        if hasattr(vector, "tolist"):  # a numpy array
            vector = vector.tolist()
        if isinstance(vector, Mapping) or not _is_sequence(vector) or not vector:
            _fail(f"steering[{layer}]", "a list of numbers or a control vector's name", vector)
        for x in vector:
            ok = isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
            if not ok:
                _fail(f"steering[{layer}]", "a list of finite numbers", x)
        out[layer] = tuple(float(x) for x in vector)
    if not out:
        _fail("steering", "a non-empty mapping of layer to vector", {})
    return out


def _is_sequence(value: object) -> bool:
    return value is None or isinstance(value, list | tuple | str)


def _token_id(key: object) -> int:
    """logit_bias keys arrive as ints, or as strings from JSON."""
    try:
        token = int(key)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"logit_bias keys must be token ids, got {key!r}") from None
    if token < 0 or str(token) != str(key).strip() and not isinstance(key, int):
        raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
    return token


def _stage(name: object) -> str:
    if not isinstance(name, str):
        raise ValueError(f"samplers must be stage names, got {name!r}")
    stage = _STAGE_ALIASES.get(name.strip().lower(), name.strip().lower())
    if stage not in SAMPLER_STAGES:
        raise ValueError(f"samplers: unknown stage {name!r}; known: {', '.join(SAMPLER_STAGES)}")
    return stage
