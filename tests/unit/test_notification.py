from __future__ import annotations

import pydantic
import pytest

from fanout.notification import LocalizedText, Notification, render

NOTE = Notification(
    title="New book",
    body="Out today",
    localized={
        "de": LocalizedText(title="Neues Buch", body="Heute erschienen"),
        "pt-BR": LocalizedText(title="Novo livro"),
    },
)


@pytest.mark.parametrize(
    ("locale", "title", "body"),
    [
        ("de", "Neues Buch", "Heute erschienen"),
        ("de-AT", "Neues Buch", "Heute erschienen"),  # falls back to the language
        ("pt_BR", "Novo livro", "Out today"),  # missing body comes from the default
        ("pt-PT", "New book", "Out today"),  # no 'pt' variant: the default
        ("fr", "New book", "Out today"),
        (None, "New book", "Out today"),
    ],
)
def test_locale_variant_is_chosen_with_fallback(locale: str | None, title: str, body: str) -> None:
    rendered = render(NOTE, locale, collapse_key="42")
    assert (rendered.title, rendered.body) == (title, body)


def test_collapse_key_defaults_to_the_event() -> None:
    assert render(NOTE, None, collapse_key="42").collapse_key == "42"
    own = Notification(title="t", collapse_key="mine")
    assert render(own, None, collapse_key="42").collapse_key == "mine"


def test_a_payload_over_4kb_is_refused_naming_the_limit() -> None:
    with pytest.raises(pydantic.ValidationError, match="4096"):
        Notification(title="t", data={f"k{i}": "v" * 100 for i in range(40)})


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra"):
        Notification.model_validate({"title": "t", "colour": "red"})


@pytest.mark.parametrize("field", ["title", "body", "url", "image", "sound", "collapse_key"])
@pytest.mark.parametrize("bad", ["a\x00b", "a\ud800b"])
def test_text_postgres_cannot_store_is_refused(field: str, bad: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        Notification.model_validate({"title": "t", field: bad})


@pytest.mark.parametrize("bad", [{"k\x00": "v"}, {"k": "v\x00"}, {"k": "\udfff"}])
def test_data_postgres_cannot_store_is_refused(bad: dict[str, str]) -> None:
    with pytest.raises(pydantic.ValidationError, match="data"):
        Notification.model_validate({"title": "t", "data": bad})
