"""Beam search on the engine (host only).

A search runs in rounds of one-token engine requests ("steps"), one per running beam: a step's
tokens are the prompt and its beam's tokens, and its pages are forked from the step that
proposed the beam's last token (`Scheduler.fork`: shared, the partly filled last page copied
on write), so a round computes one token per beam, batched with whatever else the engine runs.
A step keeps its pages when it ends. Once every step of a round has ended, each beam's top
candidates (the distribution the sampler chain draws from: a constraint's mask, bias,
penalties and temperature applied) are ranked by summed logprob; the best that continue become
the next round's beams and those that end (an end-of-generation or stop id, a complete
constraint, the length limit) join the finished ones; then the round's pages are released.

Ranking, the length penalty and stopping follow Hugging Face `transformers`' `_beam_search`:
`max(2, 1 + stop ids) x width` candidates per round (at most the device's 20 logprobs), a
finished beam counts only from the top `width` of them and scores `sum / length **
length_penalty` (length with its end token), and `early_stopping` True / False / "never"
decides when no running beam can still win.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jaxserve.engine.request import Request, StepEvent
from jaxserve.grammar import Matcher
from jaxserve.outputs import TokenLogprob
from jaxserve.sampling_params import MAX_LOGPROBS, SamplingParams
from jaxserve.text.detokenizer import IncrementalDetokenizer

if TYPE_CHECKING:
    from jaxserve.engine.engine import Engine


def num_candidates(num_stop_ids: int, width: int) -> int:
    """Candidates ranked per round: transformers' `max(2, 1 + stop ids) x width`, within the
    device's top-20 logprobs."""
    return min(max(2, 1 + num_stop_ids) * width, MAX_LOGPROBS)


@dataclass
class Beam:
    """A partial sequence: its tokens, their summed logprob, and what each step reported."""

    tokens: list[int]
    score: float
    entries: list[TokenLogprob]
    matcher: Matcher | None
    step: Request | None = None  # the engine request computing its next candidates
    ended: bool = False  # by a complete constraint (not a stop id)


@dataclass
class Search:
    """One prompt's beam search."""

    results: list[Request]  # the n sequences returned (never scheduled)
    params: SamplingParams  # the step requests' (one token, logprobs of the drawn chain)
    prompt: list[int]
    limit: int  # tokens a beam may have at most
    stop_ids: frozenset[int]
    running: list[Beam]
    finished: list[tuple[float, Beam]] = dataclasses.field(default_factory=list)
    improvable: bool = True  # transformers' "early stop heuristic unsatisfied"

    @property
    def width(self) -> int:
        return self.results[0].params.width

    @property
    def num_candidates(self) -> int:
        return num_candidates(len(self.stop_ids), self.width)

    def round_done(self) -> bool:
        return all(beam.step is not None and beam.step.finished for beam in self.running)


class BeamSearches:
    """The engine's beam searches: started by `Engine.add_request`, advanced after each step."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._searches: dict[int, Search] = {}  # by the results' request id
        self._steps: dict[int, Search] = {}  # by step request id

    def start(
        self, ids: Sequence[int], params: SamplingParams, prompt: str | None, priority: int
    ) -> Request:
        """Queue the first step (the prompt) and return the first of the search's results."""
        engine = self.engine
        stop_ids = frozenset(engine.sampling.stop_ids(params))
        k = num_candidates(len(stop_ids), params.width)
        step_params = dataclasses.replace(
            params,
            use_beam_search=False,
            beam_width=None,
            length_penalty=1.0,
            early_stopping=False,
            n=1,
            logprobs=k,
            logprobs_mode="processed",
            speculative=False,
        )
        first = engine.add_request(ids, step_params, prompt=prompt, priority=priority)
        limit = first.max_len - len(first.prompt_token_ids)
        first.max_len = len(first.prompt_token_ids) + 1
        first.keep_pages = True
        group: list[Request] = []
        rid = engine.new_request_id()
        results = [
            Request(
                request_id=rid,
                prompt_token_ids=first.prompt_token_ids,
                params=params,
                seed=0,
                max_len=len(first.prompt_token_ids) + limit,
                detokenizer=IncrementalDetokenizer(
                    engine.tokenizer, skip_special=params.skip_special_tokens
                ),
                prompt=prompt,
                priority=priority,
                index=i,
                group=group,
            )
            for i in range(params.n)
        ]
        matcher = first.matcher.fork() if first.matcher is not None else None
        search = Search(
            results=results,
            params=step_params,
            prompt=list(first.prompt_token_ids),
            limit=limit,
            stop_ids=stop_ids,
            running=[Beam([], 0.0, [], matcher, step=first)],
        )
        self._searches[results[0].request_id] = search
        self._steps[first.request_id] = search
        return results[0]

    def abort(self, request_id: int) -> bool:
        """Abort the search whose results have this id (False when none has)."""
        search = self._searches.pop(request_id, None)
        if search is None:
            return False
        self._end(search)
        for result in search.results:
            result.finish("abort")
        return True

    def after_step(self, events: list[StepEvent]) -> list[StepEvent]:
        """The step's events without those of beam steps, plus the results of the searches
        that ended; searches whose round is complete start the next one."""
        failed = {
            id(self._steps[rid]): error for rid, error in self.engine.failed.items()
            if rid in self._steps
        }  # fmt: skip
        out = [e for e in events if e.output.request_id not in self._steps]
        for search in list(self._searches.values()):
            error = failed.get(id(search))
            if error is not None:
                out += self._fail(search, error)
            elif search.round_done():
                try:
                    out += self._advance(search)
                except Exception as exc:  # e.g. the queue filled up: fail this search alone
                    out += self._fail(search, exc)
        return out

    def _fail(self, search: Search, error: Exception) -> list[StepEvent]:
        rid = search.results[0].request_id
        self.engine.failed[rid] = error
        self._searches.pop(rid, None)
        self._end(search)
        for result in search.results:
            result.output.error = f"{type(error).__name__}: {error}"
            result.finish("abort")
        return []

    def _end(self, search: Search) -> None:
        """Drop every step of the search and release their pages."""
        for beam in search.running:
            if beam.step is not None:
                self._drop(beam.step)

    def _drop(self, step: Request) -> None:
        self._steps.pop(step.request_id, None)
        if not step.finished:
            self.engine.abort(step)
        self.engine.scheduler.release(step)

    def _advance(self, search: Search) -> list[StepEvent]:
        """Rank the round's candidates, update the finished beams, and start the next round
        (or return the results)."""
        width, t = search.width, len(search.running[0].tokens)
        candidates = []
        for b, beam in enumerate(search.running):
            entry = beam.step.output.logprobs[-1]
            for rank, (token, logprob) in enumerate(entry.top[: search.num_candidates]):
                candidates.append((beam.score + logprob, -b, -rank, token, logprob, beam, entry))
        candidates.sort(reverse=True)
        candidates = candidates[: search.num_candidates]
        continuing: list[Beam] = []
        ended: list[tuple[float, Beam]] = []
        penalty = search.results[0].params.length_penalty
        for i, (score, _, _, token, logprob, parent, entry) in enumerate(candidates):
            completes = self._completes(search, parent, token)
            if completes is None:
                continue  # the constraint forbids it
            hits = token in search.stop_ids or completes or t + 1 >= search.limit
            if not hits and len(continuing) < width:
                continuing.append(self._extend(search, parent, token, logprob, entry, score))
            elif hits and i < width:
                child = self._extend(search, parent, token, logprob, entry, score)
                child.ended = completes
                ended.append((score / (t + 1) ** penalty, child))
        self._update_finished(search, ended)
        done = self._is_done(search, continuing, t + 1, all_hit=len(continuing) == 0)
        parents = search.running
        search.running = [] if done else continuing
        if not done:
            for beam in continuing:
                self._fork(search, beam, parents)
        for beam in parents:
            self._drop(beam.step)
        if done:
            return self._results(search, continuing)
        return []

    @staticmethod
    def _completes(search: Search, parent: Beam, token: int) -> bool | None:
        """Whether `token` completes the parent's constraint (None: the constraint forbids
        it; False without one). The parent's matcher is left as it was."""
        matcher = parent.matcher
        if matcher is None:
            return False
        if not matcher.accept_token(token):
            return None
        done = matcher.is_complete() or matcher.is_terminated()
        matcher.rollback(1)
        return done and token not in search.stop_ids

    @staticmethod
    def _extend(
        search: Search,
        parent: Beam,
        token: int,
        logprob: float,
        entry: TokenLogprob,
        score: float,
    ) -> Beam:
        """The parent's beam with `token` (an allowed one) appended."""
        matcher = None
        if parent.matcher is not None:
            matcher = parent.matcher.fork()
            matcher.accept_token(token)
        k = search.results[0].params.logprobs or 0
        record = TokenLogprob(token, logprob, entry.top[:k])
        child = Beam(parent.tokens + [token], score, parent.entries + [record], matcher)
        child.step = parent.step  # the step whose pages it forks from
        return child

    def _update_finished(self, search: Search, ended: list[tuple[float, Beam]]) -> None:
        early = search.results[0].params.early_stopping
        if not search.improvable or (early is True and len(search.finished) >= search.width):
            return
        merged = search.finished + ended
        merged.sort(key=lambda pair: pair[0], reverse=True)
        search.finished = merged[: search.width]

    def _is_done(self, search: Search, running: list[Beam], length: int, *, all_hit: bool) -> bool:
        params = search.results[0].params
        if all_hit or not running:
            return True
        full = len(search.finished) >= search.width
        if params.early_stopping is True and full:
            return True
        if params.early_stopping == "never" and params.length_penalty > 0:
            length = search.limit
        best = running[0].score / length**params.length_penalty
        if full and best <= min(score for score, _ in search.finished):
            search.improvable = False
        return not search.improvable

    def _fork(self, search: Search, beam: Beam, parents: list[Beam]) -> None:
        """Queue the step that computes `beam`'s next candidates, on its parent's pages."""
        parent = beam.step
        step = self.engine.add_request(search.prompt, search.params)
        step.max_len = len(search.prompt) + len(beam.tokens) + 1
        step.keep_pages = True
        step.output.token_ids[:] = beam.tokens
        if beam.matcher is not None:
            step.matcher = beam.matcher.fork()
        self.engine.scheduler.fork(step, parent)
        beam.step = step
        self._steps[step.request_id] = search

    def _results(self, search: Search, running: list[Beam]) -> list[StepEvent]:
        """The n best finished beams (topped up with running ones if too few ended)."""
        params = search.results[0].params
        ranked = list(search.finished)
        for beam in running[: max(0, params.n - len(ranked))]:
            ranked.append((beam.score / len(beam.tokens) ** params.length_penalty, beam))
        eos = self.engine.tokenizer.eos_ids
        events = []
        self._searches.pop(search.results[0].request_id, None)
        for result, (score, beam) in zip(search.results, ranked, strict=False):
            for token, entry in zip(beam.tokens, beam.entries, strict=True):
                if not result.finished:
                    lp = entry if params.logprobs is not None else None
                    result.append_token(token, lp, eos_ids=eos)
            if not result.finished:
                result.finish("stop" if beam.ended else "length")
            result.output.cumulative_logprob = beam.score
            result.output.beam_score = score
        for result in search.results:
            result.finish("length")  # no-op for those filled above (fewer beams than n: empty)
            out = result.output
            events.append(StepEvent(out, out.text, tuple(out.token_ids)))
        return events
