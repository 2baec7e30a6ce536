"""The PDF renderer, read back as a reader would: text, pages, fonts, images, metadata."""

import http.server
import io
import socket
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import pypdf
import pytest
from PIL import Image

from services.document.pdf import RenderedPdf, referenced_attachments, render_pdf


def png(width: int, height: int, rgb: tuple[int, int, int] = (200, 60, 60)) -> bytes:
    """A solid-colour RGB PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def encoded(image: Image.Image, kind: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def render(
    markdown: str,
    images: Mapping[str, bytes] | None = None,
    *,
    title: str = "Field notes",
    author: str = "Ann Author",
) -> tuple[RenderedPdf, pypdf.PdfReader]:
    rendered = render_pdf(title=title, author=author, markdown=markdown, images=images or {})
    reader = pypdf.PdfReader(io.BytesIO(rendered.data))
    assert rendered.pages == len(reader.pages)
    return rendered, reader


def page_texts(reader: pypdf.PdfReader) -> list[str]:
    return [page.extract_text() for page in reader.pages]


def flat(text: str) -> str:
    """Text with whitespace runs (line wraps) folded to single spaces."""
    return " ".join(text.split())


def all_text(reader: pypdf.PdfReader) -> str:
    return flat(" ".join(page_texts(reader)))


def resources(page: pypdf.PageObject, kind: str) -> list[Any]:
    found: Any = page["/Resources"].get_object()
    entries = found.get(kind)
    return [value.get_object() for value in entries.get_object().values()] if entries else []


def images_of(reader: pypdf.PdfReader) -> list[Any]:
    return [
        xobject
        for page in reader.pages
        for xobject in resources(page, "/XObject")
        if xobject["/Subtype"] == "/Image"
    ]


def image_count(reader: pypdf.PdfReader) -> int:
    return len(images_of(reader))


def font_names(reader: pypdf.PdfReader) -> set[str]:
    """Font names without the subset prefix, e.g. ``NotoSans-Bold``."""
    return {
        str(font["/BaseFont"]).lstrip("/").split("+")[-1]
        for page in reader.pages
        for font in resources(page, "/Font")
    }


def test_title_headings_and_metadata() -> None:
    markdown = "\n\n".join(f"{'#' * level} Heading level {level}" for level in range(1, 7))
    rendered, reader = render(markdown + "\n\nBody text.", title="Quarterly <plan> & notes")
    text = page_texts(reader)[0]
    assert text.splitlines()[0] == "Quarterly <plan> & notes"
    for level in range(1, 7):
        assert f"Heading level {level}" in text
    assert flat(text).index("Heading level 6") < flat(text).index("Body text.")
    assert reader.metadata is not None
    assert reader.metadata.title == "Quarterly <plan> & notes"
    assert reader.metadata.author == "Ann Author"
    assert rendered.data.startswith(b"%PDF-")


def test_bold_and_italic_use_their_own_faces_of_the_embedded_family() -> None:
    _, plain = render("just text", title="")
    assert font_names(plain) == {"NotoSans-Regular"}
    _, styled = render("some **bold**, *italic*, ***both*** and `code`", title="")
    assert flat(page_texts(styled)[0]).startswith("some bold, italic, both and code")
    assert font_names(styled) == {
        "NotoSans-Regular",
        "NotoSans-Bold",
        "NotoSans-Italic",
        "NotoSans-BoldItalic",
        "CascadiaMono-Regular",
    }


def test_greek_cyrillic_and_accented_latin_survive() -> None:
    lines = ["Καλημέρα κόσμε", "Привет, мир", "Crème brûlée, façade, naïve"]
    _, reader = render("\n\n".join(lines) + "\n\n**Ωμέγα** *Жук* `ÆØÅ`")
    text = all_text(reader)
    for line in [*lines, "Ωμέγα", "Жук", "ÆØÅ"]:
        assert line in text


def test_nested_lists_keep_order_levels_and_start_numbers() -> None:
    markdown = (
        "1. first\n"
        "2. second\n"
        "   - bullet a\n"
        "   - bullet b\n"
        "     1. deep one\n"
        "     2. deep two\n"
        "        - deepest\n"
        "3. third\n"
        "\n"
        "Between the lists.\n"
        "\n"
        "7. seventh\n"
        "8. eighth\n"
    )
    _, reader = render(markdown)
    text = all_text(reader)
    # Bullets change with the nesting depth of lists of either kind.
    assert (
        "1. first 2. second – bullet a – bullet b 1. deep one 2. deep two • deepest 3. third "
        "Between the lists. 7. seventh 8. eighth"
    ) in text


def test_long_table_splits_across_pages_with_its_header_on_each() -> None:
    rows = "\n".join(f"| row {i} | {i * 3} | {'note ' * (i % 7)} |" for i in range(160))
    _, reader = render("Intro.\n\n| Name | Value | Comment |\n|---|--:|---|\n" + rows)
    pages = page_texts(reader)
    assert len(pages) >= 3
    for page in pages:
        assert "Name Value Comment" in flat(page)
    body = all_text(reader)
    positions = [body.index(f"row {i} {i * 3}") for i in range(160)]
    assert positions == sorted(positions)


def test_code_blocks_keep_whitespace_and_wrap_long_lines() -> None:
    long_line = "x = [" + ", ".join(str(i) for i in range(80)) + "]"
    markdown = (
        "```python\ndef f():\n    if True:\n        return 'a & b < c'\n" + long_line + "\n```\n"
        "\n    indented code block\n"
    )
    _, reader = render(markdown)
    lines = page_texts(reader)[0].splitlines()
    assert "def f():" in lines
    assert "    if True:" in lines
    assert "        return 'a & b < c'" in lines
    assert "indented code block" in lines
    start = next(i for i, line in enumerate(lines) if line.startswith("x = ["))
    end = next(i for i, line in enumerate(lines) if line.endswith("79]"))
    assert end > start
    assert "".join(lines[start : end + 1]) == long_line
    assert all(len(line) < 100 for line in lines)


def test_footer_counts_pages() -> None:
    rendered, reader = render("\n\n".join(f"Paragraph {i}. " + "word " * 80 for i in range(60)))
    pages = page_texts(reader)
    total = rendered.pages
    assert total >= 3
    assert "Page 1 of " + str(total) in pages[0]
    assert f"Page {total} of {total}" in pages[-1]
    for number, page in enumerate(pages, start=1):
        assert page.strip().endswith(f"Page {number} of {total}")


def test_attachment_image_is_embedded() -> None:
    markdown = "Before.\n\n![A red square](attachment:01HXIMG)\n\nAfter."
    _, reader = render(markdown, {"01HXIMG": png(120, 80)})
    assert image_count(reader) == 1
    assert "Before. After." in all_text(reader)
    assert "A red square" not in all_text(reader)


def test_common_image_formats_embed_and_large_ones_are_downscaled() -> None:
    photo = Image.new("RGB", (640, 480), (30, 120, 200))
    big = Image.new("RGB", (4000, 3000), (90, 160, 60))
    translucent = Image.new("RGBA", (64, 64), (255, 0, 0, 128))
    images = {
        "jpeg": encoded(photo, "JPEG"),
        "big": encoded(big, "JPEG"),
        "gif": encoded(photo.convert("P"), "GIF"),
        "webp": encoded(photo, "WEBP"),
        "alpha": encoded(translucent, "PNG"),
    }
    markdown = "\n\n".join(f"![{key}](attachment:{key})" for key in images)
    _, reader = render(markdown, images)
    embedded = images_of(reader)
    assert len(embedded) == 5
    assert all(image["/Width"] <= 2000 and image["/Height"] <= 2000 for image in embedded)
    # A JPEG small enough goes in as it was uploaded, without a second lossy pass.
    assert any("/DCTDecode" in image["/Filter"] and image["/Width"] == 640 for image in embedded)
    assert not any("/ASCII85Decode" in image["/Filter"] for image in embedded)
    assert any("/SMask" in image for image in embedded)
    assert "[image" not in all_text(reader)


def test_images_too_large_to_decode_safely_are_refused() -> None:
    # The header claims 9000 x 9000 pixels; the renderer must not try to decode that.
    header = struct.pack(">IIBBBBB", 9000, 9000, 8, 2, 0, 0, 0)
    body = b"IHDR" + header
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    _, reader = render("![huge](attachment:huge)", {"huge": bomb + b"\x00" * 64})
    assert image_count(reader) == 0
    assert "[image: huge] (attachment:huge)" in all_text(reader)


def test_image_sources_other_than_passed_attachments_are_shown_as_text() -> None:
    markdown = (
        "![missing](attachment:01HNOTPASSED) ![file](/etc/hostname) "
        "![data](data:image/png;base64,iVBORw0KGgo=) ![broken](attachment:BROKEN)"
    )
    _, reader = render(markdown, {"BROKEN": b"\x89PNG\r\n\x1a\nnot really"})
    assert image_count(reader) == 0
    text = all_text(reader)
    assert "[image: missing] (attachment:01HNOTPASSED)" in text
    assert "[image: file] (/etc/hostname)" in text
    assert "[image: data] (data:image/png;base64,iVBORw0KGgo=)" in text
    assert "[image: broken] (attachment:BROKEN)" in text


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server that records every request it gets."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png(4, 4))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_urls_are_never_fetched(
    recording_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, hits = recording_server
    connects: list[object] = []
    real_connect = socket.socket.connect

    def record_connect(self: socket.socket, address: Any) -> None:
        connects.append(address)
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", record_connect)
    markdown = (
        f"![remote]({base}/a.png)\n\n"
        f'Inline <img src="{base}/b.png"> tag.\n\n'
        f'<img src="{base}/c.png">\n\n'
        f"[a link]({base}/d) and <{base}/e>"
    )
    _, reader = render(markdown, {"a.png": png(4, 4)})
    assert hits == []
    assert connects == []
    assert image_count(reader) == 0
    text = all_text(reader)
    assert f"[image: remote] ({base}/a.png)" in text
    assert f'Inline <img src="{base}/b.png"> tag.' in text
    assert f'<img src="{base}/c.png">' in text
    assert f"a link ({base}/d) and {base}/e" in text


def test_links_are_clickable_only_for_web_and_mail() -> None:
    markdown = "[site](https://example.com/a?b=1&c=2) [mail](mailto:a@example.com) [rel](notes.md)"
    _, reader = render(markdown)
    annotations = [a.get_object() for a in reader.pages[0].get("/Annots", [])]
    uris = [a["/A"]["/URI"] for a in annotations]
    assert uris == ["https://example.com/a?b=1&c=2", "mailto:a@example.com"]
    assert (
        "site (https://example.com/a?b=1&c=2) mail (mailto:a@example.com) rel (notes.md)"
        in all_text(reader)
    )


def test_markup_in_user_text_is_printed_literally() -> None:
    injection = '<font color="red">x</font> <img src="http://example.invalid/a.png"> a & b < c'
    markdown = (
        f"# {injection}\n\n"
        f"{injection}\n\n"
        f"- {injection}\n\n"
        f"> {injection}\n\n"
        f"[{injection}](https://example.com/?q=<b>&x=1)\n\n"
        f"`{injection}`\n\n"
        f"| {injection} |\n|---|\n| {injection} |\n\n"
        f"```\n{injection}\n```\n\n"
        "S&P 500 &amp; &lt;tag&gt; &unknown; &#169;"
    )
    _, reader = render(markdown, title=injection)
    text = all_text(reader)
    assert text.count(injection) == 10
    assert "S&P 500 & <tag> &unknown; ©" in text
    assert reader.metadata is not None and reader.metadata.title == injection
    assert image_count(reader) == 0


def test_block_quotes_nest() -> None:
    _, reader = render("> outer **bold**\n>\n> > inner\n>\n> outer again\n\nafter")
    assert "outer bold inner outer again after" in all_text(reader)


def test_horizontal_rule_and_hard_breaks() -> None:
    _, reader = render("above\n\n---\n\nline one  \nline two")
    lines = page_texts(reader)[0].splitlines()
    assert "above" in lines and "line one" in lines and "line two" in lines


def test_over_tall_image_is_scaled_to_the_page() -> None:
    markdown = (
        "![tall](attachment:tall)\n\n- ![tall](attachment:tall)\n\n> ![tall](attachment:tall)\n\n"
        "| a |\n|---|\n| ![tall](attachment:tall) |\n\n![wide](attachment:wide)\n\nThe end."
    )
    rendered, reader = render(markdown, {"tall": png(40, 9000), "wide": png(9000, 40)})
    assert image_count(reader) >= 2  # one XObject per distinct image, per page it is on
    assert rendered.pages <= 5
    assert "The end." in all_text(reader)


def test_a_heading_stays_with_the_start_of_a_long_block_after_it() -> None:
    filler = "\n\n".join("Filler paragraph. " + "word " * 60 for _ in range(5))
    code = "\n".join(f"listing line {i}" for i in range(200))
    _, reader = render(f"{filler}\n\n## The listing\n\n```\n{code}\n```")
    first = page_texts(reader)[0]
    # Moving the heading and the whole block to page 2 would leave page 1 half empty.
    assert "The listing" in first
    assert "listing line 0" in first


def test_three_thousand_line_code_block_splits_across_pages() -> None:
    code = "\n".join(f"line {i:04d} = {i}" for i in range(3000))
    rendered, reader = render(f"```\n{code}\n```\n\nAfter the code.")
    pages = page_texts(reader)
    assert rendered.pages > 30
    assert "line 0000 = 0" in pages[0]
    assert "line 2999 = 2999" in pages[-1] or "line 2999 = 2999" in pages[-2]
    lines = [line for page in pages for line in page.splitlines() if line.startswith("line ")]
    assert lines == [f"line {i:04d} = {i}" for i in range(3000)]
    assert "After the code." in pages[-1]


def test_giant_single_cell_table_splits_inside_the_row() -> None:
    words = " ".join(f"w{i}" for i in range(12000))
    rendered, reader = render(f"| Only |\n|---|\n| {words} |\n\nAfter the table.")
    assert rendered.pages > 3
    text = all_text(reader)
    assert "w0 w1 w2" in text and "w11999" in text
    assert "After the table." in text


def test_long_table_with_a_giant_row_in_the_middle() -> None:
    rows = [f"| r{i} | short |" for i in range(40)]
    rows[20] = "| r20 | " + " ".join(f"g{i}" for i in range(9000)) + " |"
    rendered, reader = render("| Key | Text |\n|---|---|\n" + "\n".join(rows))
    text = all_text(reader)
    assert rendered.pages > 3
    assert [page.count("Key Text") for page in map(flat, page_texts(reader))] == [
        1
    ] * rendered.pages
    positions = [text.index(f"r{i} ") for i in range(40)]
    assert positions == sorted(positions)
    assert "g8999" in text


def test_tables_too_wide_for_the_page_print_as_text() -> None:
    header = "| " + " | ".join(f"c{i}" for i in range(30)) + " |"
    markdown = header + "\n|" + "---|" * 30 + "\n| " + " | ".join("v" for _ in range(30)) + " |"
    _, reader = render(markdown)
    assert "c0: v · c1: v" in all_text(reader)
    assert "c29: v" in all_text(reader)


def test_layout_that_cannot_fit_falls_back_to_a_simpler_one() -> None:
    # A 16-column table eight lists deep is narrower than its cell padding.
    markdown, indent = "", ""
    for level in range(8):
        markdown += f"{indent}- level {level}\n\n"
        indent += "  "
    markdown += indent + "| " + " | ".join(f"c{i}" for i in range(16)) + " |\n"
    markdown += indent + "|" + "---|" * 16 + "\n"
    markdown += indent + "| " + " | ".join(f"v{i}" for i in range(16)) + " |\n"
    _, reader = render(markdown)
    text = all_text(reader)
    assert "level 7" in text
    assert "c0: v0 · c1: v1" in text and "c15: v15" in text


def test_huge_paragraph_is_complete_and_in_order() -> None:
    words = [f"p{i}" for i in range(30000)]
    rendered, reader = render(" ".join(words) + " **end**")
    assert rendered.pages > 5
    text = all_text(reader)
    assert text.index("p0 p1") < text.index("p14999 p15000") < text.index("p29999 end")


@pytest.mark.parametrize("markdown", ["", "   \n\n  "])
def test_empty_markdown_gives_one_page_with_the_title(markdown: str) -> None:
    rendered, reader = render(markdown)
    assert rendered.pages == 1
    assert page_texts(reader)[0].splitlines() == ["Field notes", "Page 1 of 1"]


def test_empty_title_and_markdown_still_give_a_valid_pdf() -> None:
    rendered, reader = render("", title="", author="")
    assert rendered.pages == 1
    assert flat(page_texts(reader)[0]) == "Page 1 of 1"


def test_same_input_gives_the_same_bytes() -> None:
    markdown = "# Title\n\nΚαλημέρα & <b>\n\n| a |\n|---|\n| 1 |\n\n![i](attachment:i)"
    images = {"i": png(10, 10)}
    first = render_pdf(title="T", author="A", markdown=markdown, images=images)
    render_pdf(title="Other", author="B", markdown="Привет " * 500, images={})
    second = render_pdf(title="T", author="A", markdown=markdown, images=images)
    assert first.data == second.data
    assert first != render_pdf(title="T2", author="A", markdown=markdown, images=images)


def test_referenced_attachments_lists_attachment_images_once_in_order() -> None:
    markdown = (
        "![a](attachment:01B) text ![b](https://example.com/x.png)\n\n"
        "- ![c](attachment:01A)\n\n> ![d](attachment:01B) [not an image](attachment:01C)\n\n"
        "| ![e](attachment:01D) |\n|---|\n\n![bad](attachment:../../etc)"
    )
    assert referenced_attachments(markdown) == ["01B", "01A", "01D"]
