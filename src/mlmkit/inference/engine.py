"""The shell every inference engine shares: the model and tokenizer loaded once on a device in
a dtype, the batch budgets checked and defaulted, each text checked (a string, one the task can
use, no longer than the model takes), and the stream that runs any number of texts chunk by
chunk, results in input order, an `MlmkitError` in place of a text that failed.

`FillMask` (fill.py) and `Scorer` (score.py) add only their task: how a chunk is run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any, ClassVar

from mlmkit.config import EngineConfig
from mlmkit.errors import MlmkitError
from mlmkit.modeling.load import inference_model, max_block_size


def clip(text: str, n: int = 60) -> str:
    """`text` cut to `n` characters for an error message."""
    return text if len(text) <= n else text[: n - 3] + "..."


def check_budget(batch_size: Any = None, max_tokens: Any = None) -> None:
    """Refuse a batch budget that is not a positive integer (None: the engine's default), in
    one line naming it, before anything loads: `EngineConfig`'s rule, the CLI's too."""
    EngineConfig(batch_size=batch_size, max_tokens=max_tokens)


class Engine:
    """A masked LM ready for one task. Subclasses set the defaults below and implement
    `_chunk_runner`, and may refine `_normalize` and `_refusal`."""

    # (on a CPU, on a GPU); None: no limit
    default_batch_size: ClassVar[tuple[int | None, int | None]] = (None, None)
    default_max_tokens: ClassVar[tuple[int | None, int | None]] = (None, None)
    chunk_size: ClassVar[int] = 1024  # texts per chunk: what bounds a stream's memory

    def __init__(self, model: Any, tokenizer: Any = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int | None = None,
                 max_tokens: int | None = None, runtime: str = "torch") -> None:
        check_budget(batch_size, max_tokens)  # before loading: a bad setting costs nothing
        self.model, self.tokenizer, self.device, self.precision = inference_model(
            model, tokenizer, device, dtype, type(self).__name__, runtime)
        # "openvino" for a model OpenVINO compiled (modeling/openvino.py), else "torch"
        self.runtime: str = getattr(self.model, "runtime", "torch")
        self._check_tokenizer()
        gpu = self.device.type == "cuda"
        self.batch_size = int(batch_size) if batch_size else self.default_batch_size[gpu]
        self.max_tokens = int(max_tokens) if max_tokens else self.default_max_tokens[gpu]
        self.max_length = max_block_size(self.model.config, self.tokenizer)
        self.mask_id = self.tokenizer.mask_token_id
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else 0
        decode = self.tokenizer.decode
        self._token_str = lru_cache(maxsize=200_000)(lambda i: decode([i]))

    def results(self, texts: Iterable[Any], params: Any, chunk: int | None = None
                ) -> Iterator[Any]:
        """The task's result for each text in input order, with memory bounded by `chunk`
        texts; a text that fails yields an `MlmkitError` in its place instead of stopping the
        rest. `params` is the task's parameters object (`FillParams`, `ScoreParams`)."""
        run = self._chunk_runner(params)
        size = chunk or self.chunk_size
        buf: list[Any] = []
        for t in texts:
            buf.append(t)
            if len(buf) == size:
                yield from run(buf)
                buf = []
        if buf:
            yield from run(buf)

    def _answer(self, texts: str | list[str], params: Any) -> Any:
        """What `engine(texts, ...)` returns: the result for one text, or the list of them for
        a list; the first failed text raises its error."""
        single = isinstance(texts, str)
        results = list(self.results([texts] if single else texts, params))
        for r in results:
            if isinstance(r, MlmkitError):
                raise r
        return results[0] if single else results

    def _admit(self, texts: list[Any], results: list[Any], **encode: Any
               ) -> tuple[list[tuple[int, int]], Any]:
        """Tokenize the texts of a chunk: ((slot, row in the encoding) of each text the task
        can run, the tokenizer's encoding). Every other text gets its `MlmkitError` in
        `results` now: not a string, refused by the task, or too long for the model."""
        ok = []
        for i, t in enumerate(texts):
            if isinstance(t, str):
                ok.append(i)
            else:
                results[i] = MlmkitError(f"input {i + 1}: expected a string, got "
                                         f"{type(t).__name__}")
        if not ok:  # a fast tokenizer raises IndexError on an empty list
            return [], {"input_ids": []}
        enc = self.tokenizer([self._normalize(texts[i]) for i in ok], add_special_tokens=True,
                             return_attention_mask=False, **encode)
        admitted = []
        for row, i in enumerate(ok):
            n = len(enc["input_ids"][row])
            problem = self._refusal(texts[i], enc, row)
            if problem is None and n > self.max_length:
                problem = (f"{clip(texts[i])!r}: {n} tokens, more than the {self.max_length} "
                           "the model accepts")
            if problem is None:
                admitted.append((i, row))
            else:
                results[i] = MlmkitError(problem)
        return admitted, enc

    # ------------------------------------------------------------------ the task's part

    def _chunk_runner(self, params: Any) -> Callable[[list[Any]], list[Any]]:
        """A function from a chunk of texts to their results (an `MlmkitError` for a failed
        one); what does not depend on the texts (resolving targets) is done once, here."""
        raise NotImplementedError

    def _check_tokenizer(self) -> None:
        """Refuse a tokenizer the task cannot work with."""

    def _normalize(self, text: str) -> str:
        """The text as the tokenizer is given it."""
        return text

    def _refusal(self, text: str, enc: Any, row: int) -> str | None:
        """Why the task cannot run this text (row `row` of the encoding `enc`), or None."""
        return None
