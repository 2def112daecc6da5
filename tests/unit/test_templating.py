"""The web app's Jinja environment reads a dict row's fields as Jinja does, only faster."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import jinja2
import pytest

from app.web import i18n
from app.web.templating import Environment, template_engine

ROOT = Path(__file__).resolve().parents[2]

ROWS = [
    {"at": 1, "sender": "app@example.com"},
    # Keys named like a dict's methods: a form field or a username can be called "get".
    {"get": "boom", "items": "boom", "keys": 3, "x": "1"},
    {},
    OrderedDict(sender="ordered@example.com"),
]
NAMES = ["at", "sender", "get", "items", "keys", "x", "missing", "__class__", "copy"]


@pytest.mark.parametrize("row", ROWS)
def test_every_lookup_answers_as_jinjas_own(row):
    ours, jinjas = Environment(autoescape=True), jinja2.Environment(autoescape=True)
    for name in NAMES:
        assert ours.getattr(row, name) == jinjas.getattr(row, name), name


def test_a_template_calls_a_dicts_method_whatever_keys_it_holds():
    template = Environment(autoescape=True).from_string(
        "{{ form.get('x') }} {{ form.sender }} {{ form.missing }}|"
        "{% for k, v in form.items() %}{{ k }}{% endfor %}"
    )
    form = {"get": "boom", "items": "boom", "x": "1", "sender": "a@b"}
    assert template.render(form=form) == "1 a@b |getitemsxsender"


def test_a_plain_dicts_field_is_read_without_jinjas_attribute_lookup(monkeypatch):
    def refused(self, obj, attribute):
        raise AssertionError(f"Jinja's getattr for {attribute!r}")

    monkeypatch.setattr(jinja2.Environment, "getattr", refused)
    assert (
        Environment(autoescape=True).from_string("{{ row.sender }}").render(row=ROWS[0])
        == "app@example.com"
    )
    with pytest.raises(AssertionError):
        Environment(autoescape=True).from_string("{{ row.sender }}").render(row=ROWS[3])


def test_the_app_renders_its_templates_with_it_and_the_language_filters():
    engine = template_engine(ROOT / "templates").engine
    assert isinstance(engine, Environment)
    assert engine.autoescape is True
    assert set(i18n.FILTERS) <= set(engine.filters)
    assert {"csrf_token", "url_for"} <= set(engine.globals)
