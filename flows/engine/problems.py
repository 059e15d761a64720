"""Problems found in user input, reported all at once, one line each.

Validation never stops at the first problem: the user fixes a plan in one pass. Each
line names the file, the key path and what to do; the command line exits with code 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

EXIT_BAD_INPUT = 2


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
        where = f"{self.where}: " if self.where else ""
        return f"{prefix}{self.source}: {where}{self.message}"


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


def raise_if_errors(problems: Iterable[Problem]) -> None:
    """Raise ``PlanError`` when any problem is an error."""
    errors = errors_of(problems)
    if errors:
        raise PlanError(errors)
