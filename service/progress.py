"""The progress bar of the long-running commands (``ctdd catalog export``, ``ctdd backfill``) on a terminal: tqdm's,
with the command's own counts after the bar. Off a terminal the commands print plain lines instead (one per
report), which this module does not handle.
"""

from __future__ import annotations

import os
from typing import TextIO

from tqdm import tqdm


class _Bar(tqdm):
    """A tqdm bar whose format may name ``{counts}``: the command's own summary of what was done."""

    def __init__(self, *args, counts: str, **kwargs):
        self.counts = counts
        super().__init__(*args, **kwargs)

    @property
    def format_dict(self):
        return {**super().format_dict, "counts": self.counts}


def screen(out: TextIO) -> tuple[int, int]:
    """The terminal's columns and rows; one that reports none (a fresh pseudo-terminal) counts as 100 x 20 (tqdm
    itself would then draw nothing)."""
    try:
        size = os.get_terminal_size(out.fileno())
    except (OSError, ValueError, AttributeError):
        return 100, 20
    return size.columns or 100, size.lines or 20


def terminal_bar(label: str, total: int | None, done: int, counts: str, out: TextIO) -> _Bar:
    """A bar on the terminal ``out``, drawn at once: ``label  50%|█████     | <counts>`` (without a total:
    ``label <counts>``). Set its ``counts``, ``total`` and ``n``, then ``refresh()``; ``close()`` draws it a last
    time and ends the line."""
    ncols, nrows = screen(out)
    return _Bar(desc=label, total=total, initial=done, counts=counts, file=out, ncols=ncols, nrows=nrows, leave=True,
                mininterval=0.1, bar_format="{desc} {percentage:3.0f}%|{bar}| {counts}" if total else "{desc} {counts}")
