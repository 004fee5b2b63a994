"""Schedules for the temperature and the loss weights, written as short strings.

    "3.0"                                 constant
    "linear:4.0->1.0"                     from 4.0 at the start to 1.0 at the end of training
    "cosine:0.9->0.1"                     the same along a half cosine
    "0-20:3.0->2.0,20-50:1.5->1.0"        piecewise over epochs (0-based and fractional: epoch 0 is the start of
                                          training): linear within each range, constant between ranges, the
                                          first value before the first range and the last after the last

A schedule is a pure function of the (fractional) epoch, so a resumed run picks up exactly where it stopped.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RAMP = re.compile(rf"^(linear|cosine):({_NUMBER})->({_NUMBER})$")
_PIECE = re.compile(rf"^({_NUMBER})-({_NUMBER}):({_NUMBER})->({_NUMBER})$")


@dataclass(frozen=True)
class Schedule:
    """A value that changes over training. Build one with [`Schedule.parse`]."""

    kind: str  # "constant", "linear", "cosine" or "piecewise"
    start: float = 0.0
    end: float = 0.0
    # piecewise: (first_epoch, last_epoch, start_value, end_value), sorted and non-overlapping
    pieces: tuple[tuple[float, float, float, float], ...] = ()

    @classmethod
    def parse(cls, spec: str | float) -> Schedule:
        """Reads `"3.0"`, `"linear:a->b"`, `"cosine:a->b"` or `"e0-e1:a->b,e2-e3:c->d"` (epochs)."""
        if isinstance(spec, (int, float)):
            return cls("constant", float(spec), float(spec))
        text = spec.replace(" ", "")
        if re.fullmatch(_NUMBER, text):
            return cls("constant", float(text), float(text))
        if match := _RAMP.match(text):
            return cls(match.group(1), float(match.group(2)), float(match.group(3)))
        pieces = []
        for part in text.split(","):
            match = _PIECE.match(part)
            if match is None:
                raise ValueError(
                    f"cannot read the schedule {spec!r} (at {part!r}); write a number ('3.0'), 'linear:4.0->1.0', "
                    "'cosine:0.9->0.1', or epoch ranges like '0-20:3.0->2.0,20-50:1.5->1.0'."
                )
            first, last, start, end = (float(group) for group in match.groups())
            if last <= first:
                raise ValueError(f"schedule range {part!r} in {spec!r} must end after it starts.")
            pieces.append((first, last, start, end))
        pieces.sort()
        for previous, following in zip(pieces, pieces[1:]):
            if following[0] < previous[1]:
                raise ValueError(f"schedule ranges in {spec!r} overlap: {previous[:2]} and {following[:2]}.")
        return cls("piecewise", pieces=tuple(pieces))

    def lowest(self) -> float:
        """The smallest value the schedule takes (it is linear or cosine between its breakpoints)."""
        if self.kind == "piecewise":
            return min(min(start, end) for _, _, start, end in self.pieces)
        return min(self.start, self.end)

    def value(self, epoch: float, num_epochs: float, progress: float | None = None) -> float:
        """The value at `epoch` (fractional, 0-based) of a run of `num_epochs`.

        Ramps (linear, cosine) follow `progress` (the finished fraction of training, e.g. global_step / max_steps)
        when given, else epoch / num_epochs; piecewise schedules follow the epoch.
        """
        if self.kind == "constant":
            return self.start
        if self.kind in ("linear", "cosine"):
            if progress is None:
                progress = epoch / num_epochs if num_epochs > 0 else 1.0
            progress = min(max(progress, 0.0), 1.0)
            if self.kind == "cosine":
                progress = (1 - math.cos(math.pi * progress)) / 2
            return self.start + (self.end - self.start) * progress
        if epoch <= self.pieces[0][0]:
            return self.pieces[0][2]
        for first, last, start, end in self.pieces:
            if first <= epoch <= last:
                return start + (end - start) * (epoch - first) / (last - first)
            if epoch < first:  # between two ranges: hold the previous range's end value
                break
            value = end
        return value


__all__ = ["Schedule"]
