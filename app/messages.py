"""Messages for users: an English key plus parameters, which the web layer translates whole.

A `Message` is the English text itself (a str, so logs, audit rows, the API and every existing
comparison see English as before), and it keeps its key and parameters apart for
`app.web.i18n`, which looks the key up and fills the same `{name}` placeholders in German.
Parameters that are Messages themselves are translated too.
"""

from __future__ import annotations


class Message(str):
    key: str
    params: dict[str, object]

    def __new__(cls, key: str, /, **params: object) -> Message:
        self = super().__new__(cls, key.format(**params) if params else key)
        self.key = key
        self.params = params
        return self


def plural(singular: str, plural: str, n: int, /, **params: object) -> Message:
    """The form for `n` ({n} in the text). German counts like English (one, or other), so the
    English form chosen here is also the key of the right German form."""
    return Message(singular if n == 1 else plural, n=n, **params)


def message_of(exc: BaseException) -> str:
    """What an exception says to the user: its Message when it was raised with one (the web
    layer can translate that), else its text."""
    first = exc.args[0] if len(exc.args) == 1 else None
    return first if isinstance(first, Message) else str(exc)


def joined(separator: str, parts: list[str]) -> str:
    """Several messages in one line, each translated on its own."""
    if not parts:
        return ""
    names = {f"m{i}": part for i, part in enumerate(parts)}
    return Message(separator.join("{" + name + "}" for name in names), **names)
