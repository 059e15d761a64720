"""Problems found in user input, reported all at once, one line each.

Validation never stops at the first problem: the user fixes a plan in one pass. Each
line names the file, the key path and what to do; the command line exits with code 2.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

EXIT_BAD_INPUT = 2
MAX_WHERE_CHARS = 200
MAX_MESSAGE_CHARS = 1000
"""A problem line stays readable even when the culprit is a megabyte of YAML."""


def one_line(text: str, limit: int) -> str:
    """``text`` on one line (control characters escaped) and at most ``limit`` characters.

    One line per problem is the contract with the user and with scripts that count lines,
    so a key or value holding a newline must not break it, and a huge value must not
    flood the terminal.
    """
    flat = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    if len(flat) > limit:
        return f"{flat[:limit]}… ({len(flat) - limit} more characters)"
    return flat


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a plan, dataset or parameter."""

    source: str
    where: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def line(self) -> str:
        """The one-line form printed to the user."""
        prefix = "warning: " if self.severity == "warning" else ""
        where = f"{one_line(self.where, MAX_WHERE_CHARS)}: " if self.where else ""
        message = one_line(" ".join(self.message.split("\n")), MAX_MESSAGE_CHARS)
        return f"{prefix}{one_line(self.source, MAX_WHERE_CHARS)}: {where}{message}"


class PlanError(ValueError):
    """Raised with every error found; the CLI prints one line per problem and exits 2."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = tuple(problems)
        super().__init__("\n".join(p.line() for p in self.problems))

    @classmethod
    def from_line(cls, source: str, message: str) -> PlanError:
        """A single problem with no key path (e.g. a command-line option)."""
        return cls([Problem(source, "", message)])


def errors_of(problems: Iterable[Problem]) -> list[Problem]:
    """Keep only the errors."""
    return [p for p in problems if p.severity == "error"]


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def describe_os_error(exc: OSError, *, doing: str = "writing") -> str:
    """One line that says what failed, on which file, and what to do — never a traceback.

    The flow writes run folders, reports and models; when the disk is full or the folder
    read-only the user needs the path and the fix, not Python's stack.
    """
    target = exc.filename or "a file"
    if exc.filename2:
        target = f"{exc.filename} → {exc.filename2}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in NO_SPACE:
        advice = "free some space or choose another --runs-dir; the file was not written"
    elif exc.errno in NOT_ALLOWED:
        advice = "choose a writable --runs-dir"
    elif exc.errno == errno.ENOTDIR:
        advice = "a part of this path is a file, not a folder"
    elif exc.errno == errno.ENAMETOOLONG:
        advice = "use a shorter path"
    else:
        advice = "check the path and the file system"
    return one_line(f"{target}: {doing} failed: {reason} ({advice})", MAX_MESSAGE_CHARS)
