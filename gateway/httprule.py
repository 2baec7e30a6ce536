"""google.api.http path templates, compiled once into regular expressions.

Grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;
"""

import re
from dataclasses import dataclass
from urllib.parse import unquote

_SINGLE = "[^/]+"
_MULTI = "[^/]+(?:/[^/]+)*"
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=@-]+$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENCODED_SLASH = re.compile("%2[fF]")


class TemplateError(ValueError):
    """A path template that does not follow the HttpRule grammar."""


@dataclass(frozen=True)
class Variable:
    """A ``{field.path=...}`` capture and how its value is decoded."""

    field_path: tuple[str, ...]
    group: str
    multi_segment: bool
    pattern: str

    @property
    def name(self) -> str:
        return ".".join(self.field_path)

    def decode(self, raw: str) -> str:
        """Percent-decode a captured value; multi-segment captures keep ``%2F`` (HttpRule)."""
        if "%" not in raw:
            return raw
        if not self.multi_segment:
            return unquote(raw)
        return "%2F".join(unquote(part) for part in _ENCODED_SLASH.split(raw))


@dataclass(frozen=True)
class PathTemplate:
    """A parsed path template with its compiled matcher."""

    template: str
    regex: re.Pattern[str]
    variables: tuple[Variable, ...]
    # The whole path when the template has no variable or wildcard: an O(1) dict key.
    literal: str | None
    verb: str | None
    # Sort key: more literal segments first, then a verb, then fewer multi-segment captures.
    specificity: tuple[int, int, int, int]
    openapi_path: str

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded variable values if ``raw_path`` (still percent-encoded) matches."""
        if self.literal is not None:
            return {} if raw_path == self.literal else None
        found = self.regex.match(raw_path)
        if found is None:
            return None
        return {v.name: v.decode(found.group(v.group)) for v in self.variables}


def _split(text: str, separator: str) -> list[str]:
    """Split on ``separator`` outside braces."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "{":
            depth += 1
            if depth > 1:
                raise TemplateError("nested variables")
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError("unbalanced braces")
        if char == separator and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise TemplateError("unbalanced braces")
    parts.append("".join(current))
    return parts


def _segment_pattern(segment: str) -> tuple[str, bool]:
    """The regex of one plain segment and whether it spans several path segments."""
    if segment == "*":
        return _SINGLE, False
    if segment == "**":
        return _MULTI, True
    if not _LITERAL.match(segment):
        raise TemplateError(f"bad literal segment {segment!r}")
    return re.escape(segment), False


def parse_template(template: str) -> PathTemplate:
    """Parse and compile ``template``; raises TemplateError when it is malformed."""
    if not template.startswith("/"):
        raise TemplateError("a template starts with '/'")
    body, verb = template[1:], None
    pieces = _split(body, ":")
    if len(pieces) > 2:
        raise TemplateError("more than one verb")
    if len(pieces) == 2:
        body, verb = pieces
        if "/" in verb or not _LITERAL.match(verb):
            raise TemplateError(f"bad verb {verb!r}")
    parts: list[str] = []
    openapi: list[str] = []
    variables: list[Variable] = []
    literals = wildcards = multi = 0
    for segment in _split(body, "/"):
        if segment.startswith("{") and segment.endswith("}"):
            inner = segment[1:-1]
            field, _, sub = inner.partition("=")
            path = tuple(field.split("."))
            if not all(_IDENT.match(p) for p in path):
                raise TemplateError(f"bad field path {field!r}")
            sub_patterns = [_segment_pattern(s) for s in (sub.split("/") if sub else ["*"])]
            spans = any(m for _, m in sub_patterns)
            pattern = "/".join(p for p, _ in sub_patterns)
            group = f"v{len(variables)}"
            variables.append(Variable(path, group, spans, pattern))
            literals += sum(1 for s in (sub.split("/") if sub else []) if s not in ("*", "**"))
            wildcards += 1
            multi += spans
            parts.append(f"(?P<{group}>{pattern})")
            # Dots break OpenAPI tooling that formats path templates; the name is only a label.
            openapi.append("{" + field.replace(".", "_") + "}")
        else:
            if segment.startswith("{") or segment.endswith("}"):
                raise TemplateError(f"bad variable {segment!r}")
            pattern, spans = _segment_pattern(segment)
            if segment in ("*", "**"):
                wildcards += 1
                multi += spans
                # An unnamed wildcard binds no field; OpenAPI still needs a name for it.
                group = f"w{wildcards}"
                parts.append(f"(?:{pattern})")
                openapi.append("{_" + group + "}")
            else:
                literals += 1
                parts.append(pattern)
                openapi.append(segment)
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        raise TemplateError("a field is bound twice")
    suffix = f":{verb}" if verb else ""
    regex = re.compile("^/" + "/".join(parts) + re.escape(suffix) + "$")
    literal = template if wildcards == 0 else None
    return PathTemplate(
        template=template,
        regex=regex,
        variables=tuple(variables),
        literal=literal,
        verb=verb,
        specificity=(-literals, 0 if verb else 1, multi, -len(parts)),
        openapi_path="/" + "/".join(openapi) + suffix,
    )
