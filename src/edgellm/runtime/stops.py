"""Stop strings over streamed text: emit what can no longer become a stop string, hold back the rest."""

from __future__ import annotations

from typing import Sequence


class StopText:
    """Feed decoded text piece by piece; each call returns the text safe to show now. After a stop string
    appears, `stopped` is True and nothing past it (nor the stop string itself) is ever returned."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        cut = first_stop(self.pending, self.stops)
        if cut is not None:
            self.stopped = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = stop_prefix_len(self.pending, self.stops)
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out

    def flush(self) -> str:
        """The held-back tail once the text has ended (it never became a stop string)."""
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


def stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:k]):
                best = k
                break
    return best
