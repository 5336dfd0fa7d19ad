"""The consoles every command prints through: folded tables for a terminal, whole lines for a log.

In a terminal rich fits tables to the window and folds long cells. Written to a file or a pipe (a
SLURM job's output, CI, ``> doctor.log``), rich would assume 80 columns and fold motion keys and
paths across lines, so ``grep <key> doctor.log`` found nothing. Without a terminal the console is
therefore as wide as any line it prints: tables take their natural width (one row = one line, every
cell whole), and rules keep a readable fixed width. Colours are off there anyway (rich detects it).

User text (motion keys, paths, problems) must still be escaped (``rich.markup.escape``) before it
goes into a table cell or a markup string: a key like ``[red]x[/]`` is data, not markup.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.console import Console
from rich.rule import Rule
from rich.text import Text

# Wider than any line we print (keys, PATH_MAX paths, problem lists); rich allocates nothing per
# column of width, so a large figure costs nothing.
LOG_WIDTH = 1_000_000
RULE_WIDTH = 100


class GrailConsole(Console):
    """A rich Console that never folds when its stream is not a terminal."""

    def __init__(self, *, stderr: bool = False, **kwargs: Any):
        kwargs.setdefault("soft_wrap", True)
        kwargs.setdefault("emoji", False)
        super().__init__(stderr=stderr, **kwargs)
        if not self.is_terminal and "width" not in kwargs:
            self.width = LOG_WIDTH

    @property
    def for_log(self) -> bool:
        """True when the output goes to a file or a pipe (nothing folds)."""
        return self.width >= LOG_WIDTH

    def rule(self, title: Any = "", *, characters: str = "─", style: Any = "rule.line",
             align: Any = "center") -> None:
        if not isinstance(title, Text):
            title = Text(str(title))  # rule titles are paths and names: literal, never markup
        rule = Rule(title=title, characters=characters, style=style, align=align)
        # A rule spans the console: in a log that would be a million dashes; but its title (often a
        # path) must not be cut, so the rule grows with it.
        width = None
        if self.for_log:
            width = max(RULE_WIDTH, cell_len(title.plain) + 8)
        self.print(rule, width=width)


def make_console(*, stderr: bool = False, **kwargs: Any) -> GrailConsole:
    """The console for stdout (or stderr): one place decides how output looks without a terminal."""
    return GrailConsole(stderr=stderr, **kwargs)
