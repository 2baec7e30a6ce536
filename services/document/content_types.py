"""The media types a document may attach, and how their bytes are recognised."""

# Enough of a file's start to recognise every allowed type, and to judge text.
SNIFF_BYTES = 8192

_SIGNATURES: dict[str, tuple[bytes, ...]] = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "application/pdf": (b"%PDF-",),
}
_TEXT = ("text/plain", "text/markdown")
ALLOWED = (*_SIGNATURES, "image/webp", *_TEXT)
# Images the PDF export may embed.
IMAGES = ("image/png", "image/jpeg", "image/gif", "image/webp")


def matches(content_type: str, head: bytes) -> bool:
    """Whether a file starting with ``head`` is of ``content_type``."""
    if content_type == "image/webp":
        return head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    if content_type in _TEXT:
        return _is_text(head)
    return any(head.startswith(signature) for signature in _SIGNATURES.get(content_type, ()))


def _is_text(head: bytes) -> bool:
    """UTF-8 without NUL; a character cut at the end of the sample is fine."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as error:
        # Only an incomplete sequence at the very end of the sample is forgiven.
        return error.reason == "unexpected end of data" and error.start >= len(head) - 3
    return True
