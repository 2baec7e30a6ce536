"""Path templates: parsing, matching, decoding and precedence."""

import pytest

from gateway.httprule import TemplateError, parse_template


def test_literal_template_matches_only_itself() -> None:
    template = parse_template("/api/users/me")
    assert template.literal == "/api/users/me"
    assert template.match("/api/users/me") == {}
    assert template.match("/api/users/me/") is None
    assert template.match("/api/users/you") is None


def test_single_segment_variable() -> None:
    template = parse_template("/api/documents/{document_id}")
    assert template.match("/api/documents/01ABC") == {"document_id": "01ABC"}
    assert template.match("/api/documents/a/b") is None
    assert template.openapi_path == "/api/documents/{document_id}"


def test_nested_field_with_sub_pattern() -> None:
    template = parse_template("/v1/{book.name=shelves/*/books/*}")
    assert template.match("/v1/shelves/s1/books/b2") == {"book.name": "shelves/s1/books/b2"}
    assert template.match("/v1/shelves/s1/books") is None
    assert template.match("/v1/racks/s1/books/b2") is None
    assert template.openapi_path == "/v1/{book_name}"


def test_double_wildcard_spans_segments() -> None:
    template = parse_template("/v1/books/{name=**}")
    assert template.match("/v1/books/a/b/c") == {"name": "a/b/c"}
    assert template.match("/v1/books/a") == {"name": "a"}
    assert template.match("/v1/books/") is None


def test_verb_is_split_from_the_last_segment() -> None:
    template = parse_template("/v1/{name=shelves/*/books/*}:archive")
    assert template.match("/v1/shelves/s/books/b:archive") == {"name": "shelves/s/books/b"}
    assert template.match("/v1/shelves/s/books/b") is None
    assert template.match("/v1/shelves/s/books/b:other") is None


def test_single_segment_values_are_percent_decoded() -> None:
    template = parse_template("/api/documents/{document_id}")
    assert template.match("/api/documents/a%20b%2Fc") == {"document_id": "a b/c"}


def test_multi_segment_values_keep_encoded_slashes() -> None:
    template = parse_template("/v1/books/{name=**}")
    assert template.match("/v1/books/a%20b/c%2Fd") == {"name": "a b/c%2Fd"}


def test_specificity_prefers_literals_then_verbs() -> None:
    literal = parse_template("/v1/shelves/{shelf}/books/first")
    variable = parse_template("/v1/shelves/{shelf}/books/{book}")
    verb = parse_template("/v1/shelves/{shelf}/books/{book}:archive")
    ordered = sorted([variable, verb, literal], key=lambda t: t.specificity)
    assert ordered == [literal, verb, variable]


@pytest.mark.parametrize(
    "bad",
    [
        "api/users",
        "/v1/{name",
        "/v1/{a}/{a}",
        "/v1/{na me}",
        "/v1/{a=b/{c}}",
        "/v1/x:a:b",
        "/v1/sp ace",
    ],
)
def test_malformed_templates_are_refused(bad: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(bad)
