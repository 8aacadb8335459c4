"""User-facing errors: one readable line per problem, exit code 2, no traceback."""

from __future__ import annotations

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem the user can fix (bad config, missing path, bad data).

    `problems` holds one line per problem; the CLI prints each and exits with code 2.
    """

    def __init__(self, problems: str | list[str], hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.hint = hint
        super().__init__("\n".join(self.problems))

    def lines(self) -> list[str]:
        out = [f"error: {p}" for p in self.problems]
        if self.hint:
            out.append(f"hint: {self.hint}")
        return out
