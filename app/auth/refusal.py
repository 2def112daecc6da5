"""A refusal shown to the user: the English text (the i18n key) and its parameters, apart, so
that the web layer can translate it."""

from __future__ import annotations


class Refusal(ValueError):
    def __init__(self, message: str, *params: object) -> None:
        super().__init__(message % params if params else message)
        self.message = message
        self.params = params
