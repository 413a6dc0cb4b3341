"""Incremental detokenization: UTF-8-safe text increments and stop strings that never leak into the output."""

from __future__ import annotations

from typing import Protocol


class DecodesIds(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class TextTracker:
    """Turns a growing list of token ids into text increments.

    Decoding a window of a few ids (not the whole list) keeps each step cheap; an increment is
    withheld while it ends in U+FFFD (an incomplete multibyte character) or while its tail could
    still become one of the stop strings.
    """

    def __init__(self, tokenizer: DecodesIds, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all text decoded so far
        self.emitted = 0  # how much of `text` was handed out
        self.stopped = False

    def add(self, token_id: int) -> str:
        """Append one id; return the text that can safely be released now."""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
        window = self.tokenizer.decode(self.ids[self._prefix_offset :])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            self.text += window[len(prefix) :]
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Release everything still held (an incomplete character comes out as U+FFFD)."""
        if not self.stopped and self._read_offset < len(self.ids):
            prefix = self.tokenizer.decode(self.ids[self._prefix_offset : self._read_offset])
            window = self.tokenizer.decode(self.ids[self._prefix_offset :])
            self.text += window[len(prefix) :]
            self._read_offset = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        start = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            return self._emit(len(self.text))
        if final:
            return self._emit(len(self.text))
        return self._emit(len(self.text) - self._possible_stop_prefix())

    def _possible_stop_prefix(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of a stop string."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out
