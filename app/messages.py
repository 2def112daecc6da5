"""Messages for users: an English key plus parameters, which the web layer translates whole.

A `Message` is the English text itself (a str, so logs, audit rows, the API and every existing
comparison see English as before), and it keeps its key and parameters apart for
`app.web.i18n`, which looks the key up and fills the same `{name}` placeholders in German.
Parameters that are Messages themselves are translated too.
"""

from __future__ import annotations

import re
import string


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


# A Message crossing a process boundary (the agent's socket, the peer's status API) as JSON:
# the English text alone would reach the other side untranslatable.
Wire = str | dict[str, object]


def _param(value: object) -> object:
    if isinstance(value, bool | int | float):
        return value
    return encoded(value) if isinstance(value, Message) else str(value)


def encoded(text: str) -> Wire:
    """A text as JSON data: a Message as its key and parameters (nested ones too), else as it is."""
    if not isinstance(text, Message):
        return str(text)
    return {"key": text.key, "params": {name: _param(v) for name, v in text.params.items()}}


# A key from another process names its placeholders and at most a short number format
# ("{seconds:.2f}"): the peer is untrusted, and "{x.__class__...}" or "{x:>999999999}" in a
# format string would reach into objects or fill memory.
_SAFE_SPEC = re.compile(r"\.?\d{0,2}[dfg]?")


def _safe_key(key: str, params: dict[str, object]) -> bool:
    """Whether `key` names only placeholders that `params` fills, with short number formats."""
    try:
        fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(key)]
    except ValueError:
        return False
    return all(
        name is None or (name in params and not conv and _SAFE_SPEC.fullmatch(spec or ""))
        for name, spec, conv in fields
    )


def decoded(value: object, fallback: str = "") -> str:
    """What `encoded` made, as the text it was (a Message again); `fallback` for what is
    neither a text nor a message whose parameters fill its key."""
    if isinstance(value, str):
        return value
    if not isinstance(value, dict) or not isinstance(value.get("key"), str):
        return fallback
    params = value.get("params")
    params = params if isinstance(params, dict) else {}
    if not _safe_key(value["key"], params):
        return fallback
    try:
        return Message(
            value["key"],
            **{
                str(name): p if isinstance(p, bool | int | float) else decoded(p)
                for name, p in params.items()
            },
        )
    except (KeyError, IndexError, ValueError, AttributeError):
        return fallback
