"""The one error type that a user's bad input raises."""

from __future__ import annotations


class InputError(ValueError):
    """A request field breaks a rule. The message names the field, the value and the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def show(value: object, limit: int = 80) -> str:
    """repr() of a value, shortened so that an error message stays readable."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"
