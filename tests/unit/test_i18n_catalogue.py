"""Every text a user can see has a German entry in the one catalogue, app/web/i18n.py.

The texts are found where they are written: `_(...)` and `ngettext(...)` in the templates, and
in the Python code the English keys of `Message(...)`, `plural(...)`, refusals and the web layer's
`_(...)`. A user message written as a bare string where a service raises it is caught too.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from jinja2 import Environment, FileSystemLoader
from jinja2.ext import extract_from_ast

from app.messages import Message, decoded, encoded, plural
from app.web.i18n import GERMAN, format_datetime, format_number, translator

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
# Calls whose first argument (both, for plural) is an English key.
KEY_CALLS = {"Message", "Refusal", "MfaError", "SecurityKeyError", "Throttled", "_"}
PLURAL_CALLS = {"plural"}
# Where services and screens raise or hand over what a user reads.
USER_MESSAGE_MODULES = [
    "app/config/validation.py",
    "app/config/service.py",
    "app/postfix/routetest.py",
    "app/postfix/routecheck.py",
    "app/cluster/switchover.py",
    # What reaches a page from the privileged agent (queue actions, Test / Apply, switchover,
    # cluster panel), from the pipeline of a config version, and from the cluster's parts.
    "app/agent/callers.py",
    "app/agent/client.py",
    "app/agent/policy.py",
    "app/agent/postfix.py",
    "app/agent/queuesync.py",
    "app/agent/server.py",
    "app/agent/vip.py",
    "app/config/snapshot.py",
    "app/postfix/pipeline.py",
    "app/postfix/render.py",
    "app/cluster/locks.py",
    "app/cluster/peer.py",
    "app/cluster/status.py",
    "app/cluster/vip.py",
    "app/replication/queuesync.py",
    "app/replication/reconcile.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "app/auth").glob("*.py")),
    *sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "app/web/controllers").glob("*.py")
        if p.name != "api.py"
    ),
]
# German words that are spelled as the English ones; anything else identical is a slip.
SAME_IN_GERMAN = {
    "Port",
    "Version",
    "Route",
    "Client",
    "Details",
    "Name",
    "Status",
    "Code",
    "Map",
    "Cluster",
    "[mailrelay {node}] {what}: {title}",
    "{network} is too wide: trusting it would come close to an open relay (at least /{floor}).",
}


def _template_keys() -> dict[str, str]:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True)
    keys: dict[str, str] = {}
    for path in sorted(TEMPLATES.rglob("*.html")):
        name = str(path.relative_to(TEMPLATES))
        tree = env.parse(path.read_text(), name)
        for lineno, function, message in extract_from_ast(tree, ("_", "ngettext")):
            texts = message if isinstance(message, tuple) else (message,)
            for text in texts[: 2 if function == "ngettext" else 1]:
                if isinstance(text, str):
                    keys[text] = f"templates/{name}:{lineno}"
    return keys


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    # mfa.MfaError(...) counts.
    return getattr(func, "attr", "")


def _python_calls() -> list[tuple[str, ast.Call]]:
    calls = []
    for path in sorted((ROOT / "app").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), where)):
            if isinstance(node, ast.Call) and _called(node) in KEY_CALLS | PLURAL_CALLS:
                calls.append((f"{where}:{node.lineno}", node))
    return calls


def _python_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for where, call in _python_calls():
        count = 2 if _called(call) in PLURAL_CALLS else 1
        for arg in call.args[:count]:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                keys[arg.value] = where
    return keys


def test_every_text_in_the_templates_has_a_german_entry() -> None:
    keys = _template_keys()
    assert len(keys) > 200  # the scan found the templates' texts
    missing = {k: where for k, where in keys.items() if k not in GERMAN}
    assert not missing, f"no German for: {missing}"


def test_every_message_the_code_shows_has_a_german_entry() -> None:
    keys = _python_keys()
    assert len(keys) > 150  # the scan found the services' and screens' messages
    missing = {k: where for k, where in keys.items() if k not in GERMAN}
    assert not missing, f"no German for: {missing}"


def test_message_keys_are_written_out_so_that_the_catalogue_can_be_checked() -> None:
    # An f-string or a variable as the key would be a text no scan can see.
    # Passing on a message made elsewhere (`exc.message`, `text.key`) is fine.
    dynamic = [
        where
        for where, call in _python_calls()
        if _called(call) != "_"
        and not where.startswith(("app/messages.py", "app/web/i18n.py"))
        and call.args
        and not (isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str))
        and not (
            isinstance(call.args[0], ast.Attribute) and call.args[0].attr in {"key", "message"}
        )
    ]
    assert not dynamic, f"keys that are not literal strings: {dynamic}"


def _is_bare(node: ast.AST | None) -> bool:
    """A text written out as a plain or f-string instead of a Message."""
    if isinstance(node, ast.IfExp):
        return _is_bare(node.body) or _is_bare(node.orelse)
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str) and " " in node.value
    )


def _bare_texts(call: ast.Call) -> list[int]:
    """Line numbers of bare texts handed to an error or added to a list of problems or notes
    (what Test configuration, Apply and the config pull show): the first argument, or the
    values of the dict that FieldErrors({"field": "text"}) and the like map each field to."""
    if _called(call) in KEY_CALLS:
        return []  # a refusal: the key and its parameters, as a Message
    args = call.args[:1]
    values = args[0].values if args and isinstance(args[0], ast.Dict) else args
    return [value.lineno for value in values if _is_bare(value)]


@pytest.mark.parametrize("module", USER_MESSAGE_MODULES)
def test_user_messages_are_raised_as_translatable_messages(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text(), module)
    bare = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and (_is_error(node) or _adds_a_problem(node)):
            bare += _bare_texts(node)
        # A bare text as the answer's "unknown" reason (the cluster panel) or a report's error.
        if isinstance(node, ast.Dict):
            bare += [
                value.lineno
                for key, value in zip(node.keys, node.values, strict=True)
                if isinstance(key, ast.Constant) and key.value in SHOWN_KEYS and _is_bare(value)
            ]
    assert not bare, f"{module}: user messages not wrapped in Message at lines {sorted(set(bare))}"


def _is_error(call: ast.Call) -> bool:
    # A RuntimeError is a bug's: the user sees "Internal error", never its text.
    name = _called(call)
    return name != "RuntimeError" and name.endswith(
        ("Error", "Errors", "Failed", "NotFound", "Refusal")
    )


# Dict keys whose values the pages show: a node status part's reason, a refusal's error.
SHOWN_KEYS = {"unknown", "error", "detail"}


def _adds_a_problem(call: ast.Call) -> bool:
    """problems.append(...), report.notes.append(...) and the like."""
    func = call.func
    if not (isinstance(func, ast.Attribute) and func.attr in {"append", "refuse"}):
        return False
    owner = func.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    return name in {"problems", "notes", "report"}


def _placeholders(text: str) -> list[str]:
    return sorted(re.findall(r"\{[^{}]*\}|%[sd]", text))


def test_german_entries_keep_the_placeholders_of_their_key() -> None:
    wrong = {
        k: v
        for k, v in GERMAN.items()
        if sorted(p.split(":")[0] for p in _placeholders(k))
        != sorted(p.split(":")[0] for p in _placeholders(v))
    }
    assert not wrong


def test_no_german_entry_is_the_english_text_by_mistake() -> None:
    same = {k for k, v in GERMAN.items() if k == v} - SAME_IN_GERMAN
    assert not same


def test_a_message_is_translated_whole_with_its_parameters_and_nested_messages() -> None:
    why = Message("a loopback address")
    message = Message(
        "The relay host {address} is {why}: a route must point at a mail server elsewhere on "
        "the network.",
        address="127.0.0.1",
        why=why,
    )
    assert message.startswith("The relay host 127.0.0.1 is a loopback address:")
    german = translator("de")(message)
    assert german.startswith("Der Relay-Host 127.0.0.1 ist eine Loopback-Adresse:")
    assert translator("en")(message) == message


def test_plural_forms_follow_the_count_in_both_languages() -> None:
    de = translator("de")
    assert plural("{n} message", "{n} messages", 1) == "1 message"
    assert plural("{n} message", "{n} messages", 2) == "2 messages"
    assert de(plural("{n} message", "{n} messages", 1)) == "1 Nachricht"
    assert de(plural("{n} message", "{n} messages", 0)) == "0 Nachrichten"


def test_dates_and_numbers_are_written_the_german_way_in_german_only() -> None:
    import datetime as dt

    at = dt.datetime(2026, 12, 5, 14, 3, 9)
    assert format_datetime(at, "de") == "05.12.2026 14:03"
    assert format_datetime(at, "en") == "2026-12-05 14:03"
    assert format_datetime("2026-12-05T14:03:09.5+00:00", "de", seconds=True) == (
        "05.12.2026 14:03:09"
    )
    assert format_number(1234.5, "de", 1) == "1.234,5"
    assert format_number(1234.5, "en", 1) == "1234.5"
    assert format_number(1234567, "de") == "1.234.567"
    # What the peer sends is untrusted: a value of another type shows as a dash, and the page
    # with it (the cluster panel) still renders.
    for language in ("en", "de"):
        assert format_number("a while", language) == "–"  # type: ignore[arg-type]
        assert format_datetime("yesterday", language) == "–"
        assert format_datetime(12, language) == "–"  # type: ignore[arg-type]
    handover = Message(
        "keepalived stopped, the VIP left this node after {seconds:.2f} s, keepalived started "
        "again (BACKUP)",
        seconds=1.25,
    )
    assert "after 1.25 s" in handover
    assert "nach 1,25 s" in translator("de")(handover)


def test_a_message_crosses_json_whole_and_is_translated_on_the_other_side() -> None:
    import json

    sent = Message(
        "{problem} (keepalived was started again)",
        problem=Message(
            "{vip} was still on this node {seconds:g} s after keepalived stopped",
            vip="198.18.0.100",
            seconds=1.5,
        ),
    )
    received = decoded(json.loads(json.dumps(encoded(sent))))
    assert received == sent
    assert translator("de")(received) == (
        "198.18.0.100 lag 1,5 s nach dem Stopp von keepalived noch auf diesem Knoten "
        "(keepalived wurde wieder gestartet)"
    )
    # What a program printed stays a plain parameter: quoted as it is, never looked up.
    said = decoded(encoded(Message("{command}: {output}", command="postconf", output="set")))
    assert translator("de")(said) == "postconf meldete: set"


@pytest.mark.parametrize(
    "key",
    [
        "{x.__class__.__init__}",  # attribute access into the parameter's objects
        "{x[0]}",
        "{x!r}",
        "{x:>999999999}",  # a width that fills memory
        "{missing}",  # a placeholder no parameter fills: the page would fail to render
        "{x:.2f}",  # a number format for a text
    ],
)
def test_a_key_from_another_process_cannot_reach_into_objects_or_break_the_page(key: str) -> None:
    assert decoded({"key": key, "params": {"x": "text"}}, "the English") == "the English"
