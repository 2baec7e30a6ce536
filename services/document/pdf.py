"""Renders a document's Markdown to PDF: CommonMark plus tables, an embedded font, no fetching.

Images: ``![alt](attachment:<attachment_id>)`` embeds ``images[<attachment_id>]``, the bytes of
one of the document's own ready attachments that the caller has already read;
``referenced_attachments`` lists the ids a text uses, in order. Any other image source (an
http(s) URL, a file path, a data URI, an id the caller did not pass, bytes that do not decode
as an image) is never opened or fetched: the PDF shows the alt text and the source as text.
Links are printed with their URL and are clickable only for http, https and mailto. Raw HTML is
not interpreted: tags in the text are printed as typed.
"""

import io
import logging
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, partial
from typing import Any, Literal, TypeAlias
from xml.sax.saxutils import escape

import pymupdf_fonts
from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode
from PIL import Image, ImageOps
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import (
    Flowable,
    HRFlowable,
    KeepTogether,
    ListFlowable,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)
from reportlab.platypus.doctemplate import LayoutError

_Alignment: TypeAlias = Literal[0, 1, 2]  # reportlab TA_LEFT, TA_CENTER, TA_RIGHT
ImageSource: TypeAlias = bytes
"""The bytes of an image attachment (PNG, JPEG, GIF or WebP)."""

logger = logging.getLogger(__name__)

ATTACHMENT_SCHEME = "attachment:"
_ATTACHMENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CLICKABLE = re.compile(r"(?:https?://|mailto:)", re.IGNORECASE)
# C0 controls other than tab/newline/CR have no glyph and upset some PDF viewers.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

SANS = "FolioSans"
SANS_BOLD = "FolioSans-Bold"
MONO = "FolioMono"

PAGE_WIDTH, PAGE_HEIGHT = A4
MARGIN_X = 20 * mm
MARGIN_TOP = 20 * mm
MARGIN_BOTTOM = 22 * mm
FRAME_WIDTH = PAGE_WIDTH - 2 * MARGIN_X
# The frame's own padding (6 pt top and bottom) plus slack for list/quote spacing.
BLOCK_MAX_HEIGHT = PAGE_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM - 12 - 30
CELL_IMAGE_MAX_HEIGHT = BLOCK_MAX_HEIGHT / 3

IMAGE_MAX_SIDE_PX = 2000  # about 300 dpi across the frame: more only grows the file
IMAGE_MAX_PIXELS = 64_000_000  # decoded size we accept at all (about 256 MB as RGBA)
SOURCE_SHOWN_CHARS = 120
# Past this many columns a cell is narrower than a short word: such tables print as text.
MAX_TABLE_COLUMNS = 16
MIN_COLUMN_WIDTH = 20.0  # cell padding (10 pt) plus a character or two
# Reportlab re-wraps a paragraph's remaining text at every page break, so one huge paragraph
# costs quadratic time; past this size it is laid out as consecutive runs (a few pages each).
PARAGRAPH_CHUNK_CHARS = 12_000

TEXT = colors.HexColor("#1f2328")
MUTED = colors.HexColor("#59636e")
RULE = colors.HexColor("#d1d9e0")
LINK = colors.HexColor("#0b57d0")
CODE_BG = colors.HexColor("#f3f4f6")
HEADER_BG = colors.HexColor("#eef1f4")
BULLETS = ("•", "–", "‣")


@dataclass(frozen=True, slots=True)
class RenderedPdf:
    """A rendered PDF and its page count."""

    data: bytes
    pages: int


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")

_fonts_lock = threading.Lock()
_fonts_registered = False


def _set_up_reportlab() -> None:
    """Registers the embedded font families and output settings, once per process."""
    global _fonts_registered
    with _fonts_lock:
        if _fonts_registered:
            return
        # Plain binary streams: ASCII85 only helps 7-bit channels and adds a quarter to the
        # size of every image, font and page (reportlab has this as a process-wide setting).
        rl_config.useA85 = 0
        # Noto Sans and Cascadia Mono cover Latin, Greek and Cyrillic; both ship with the
        # project as a dependency so rendering never depends on the host's fonts.
        faces = {
            SANS: "notos",
            "FolioSans-Bold": "notosbo",
            "FolioSans-Italic": "notosit",
            "FolioSans-BoldItalic": "notosbi",
            MONO: "cascadia",
            "FolioMono-Bold": "cascadiab",
            "FolioMono-Italic": "cascadiai",
            "FolioMono-BoldItalic": "cascadiabi",
        }
        for name, key in faces.items():
            data: bytes = pymupdf_fonts.fontbuffers[key]()
            pdfmetrics.registerFont(TTFont(name, io.BytesIO(data)))
        for family in (SANS, MONO):
            pdfmetrics.registerFontFamily(
                family,
                normal=family,
                bold=f"{family}-Bold",
                italic=f"{family}-Italic",
                boldItalic=f"{family}-BoldItalic",
            )
        _fonts_registered = True


@dataclass(frozen=True, slots=True)
class _Styles:
    title: ParagraphStyle
    headings: tuple[ParagraphStyle, ...]
    body: ParagraphStyle
    item: ParagraphStyle
    cell: ParagraphStyle
    code_size: float
    code_leading: float


@cache
def _styles() -> _Styles:
    body = ParagraphStyle(
        "body", fontName=SANS, fontSize=10.5, leading=15, textColor=TEXT, spaceAfter=7
    )
    heading_sizes = (20, 16.5, 14, 12.5, 11, 10.5)
    headings = tuple(
        ParagraphStyle(
            f"h{level}",
            parent=body,
            fontName=SANS_BOLD,
            fontSize=size,
            leading=size * 1.3,
            spaceBefore=size * 0.8,
            spaceAfter=size * 0.4,
            keepWithNext=1,
            textColor=MUTED if level == 6 else TEXT,
        )
        for level, size in enumerate(heading_sizes, start=1)
    )
    return _Styles(
        title=ParagraphStyle(
            "title", parent=body, fontName=SANS_BOLD, fontSize=24, leading=30, spaceAfter=14
        ),
        headings=headings,
        body=body,
        item=ParagraphStyle("item", parent=body, spaceAfter=3),
        cell=ParagraphStyle("cell", parent=body, fontSize=9, leading=12, spaceAfter=0),
        code_size=8.5,
        code_leading=11.5,
    )


@cache
def _aligned(style: ParagraphStyle, align: _Alignment, bold: bool) -> ParagraphStyle:
    """A variant of a style with another alignment and weight (cached: tables reuse them)."""
    return ParagraphStyle(
        f"{style.name}-{align}-{int(bold)}",
        parent=style,
        alignment=align,
        fontName=SANS_BOLD if bold else style.fontName,
    )


@cache
def _spaced(style: ParagraphStyle, *, before: bool, after: bool) -> ParagraphStyle:
    """The style, or a variant without the space above or below a run of a cut paragraph."""
    if before and after:
        return style
    return ParagraphStyle(
        f"{style.name}-{int(before)}{int(after)}",
        parent=style,
        spaceBefore=style.spaceBefore if before else 0,
        spaceAfter=style.spaceAfter if after else 0,
    )


def _clean(text: str) -> str:
    """Drops control characters and lone surrogates, which no font or PDF string can carry."""
    text = _CONTROL.sub("", text)
    return text.encode("utf-8", "replace").decode("utf-8")


def _esc(text: str) -> str:
    """Escapes text for reportlab's paragraph markup."""
    return escape(text)


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})


def _attachment_id(src: str) -> str | None:
    if src[: len(ATTACHMENT_SCHEME)].lower() != ATTACHMENT_SCHEME:
        return None
    ident = src[len(ATTACHMENT_SCHEME) :]
    return ident if _ATTACHMENT_ID.fullmatch(ident) else None


def referenced_attachments(markdown: str) -> list[str]:
    """The attachment ids the Markdown's images refer to, in order of first use."""
    seen: dict[str, None] = {}
    for token in _MARKDOWN.parse(_clean(markdown)):
        for child in token.children or ():
            if child.type == "image":
                ident = _attachment_id(str(child.attrGet("src") or ""))
                if ident is not None:
                    seen.setdefault(ident)
    return list(seen)


# --- flowables -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _LoadedImage:
    reader: ImageReader
    width_px: int
    height_px: int


def _load_image(data: bytes) -> _LoadedImage | None:
    """Decodes and, when large, downscales image bytes; None when they are not a usable image."""
    try:
        with Image.open(io.BytesIO(data)) as opened:
            source_format = opened.format
            width, height = opened.size
            oversized = max(width, height) > IMAGE_MAX_SIDE_PX
            if source_format == "JPEG" and oversized:
                # Decoding a JPEG at a fraction of its size is far cheaper than a full decode.
                opened.draft("RGB", (IMAGE_MAX_SIDE_PX, IMAGE_MAX_SIDE_PX))
            if min(opened.size) < 1 or opened.size[0] * opened.size[1] > IMAGE_MAX_PIXELS:
                return None
            rotated = opened.getexif().get(0x0112, 1) not in (1, None)
            opened.load()
            if (
                source_format == "JPEG"
                and not (oversized or rotated)
                and opened.mode in ("RGB", "L")
            ):
                # The original JPEG goes into the PDF as is: smaller, no second lossy pass.
                return _LoadedImage(ImageReader(io.BytesIO(data)), width, height)
            image = ImageOps.exif_transpose(opened)
            has_alpha = "A" in image.getbands() or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
            image.thumbnail((IMAGE_MAX_SIDE_PX, IMAGE_MAX_SIDE_PX), Image.Resampling.LANCZOS)
            if source_format == "JPEG" and not has_alpha:
                encoded = io.BytesIO()
                image.save(encoded, "JPEG", quality=88)
                reader = ImageReader(io.BytesIO(encoded.getvalue()))
            else:
                reader = ImageReader(image)
            width, height = image.size
            return _LoadedImage(reader, width, height)
    except Exception:
        # Whatever the decoder rejects (truncated, bomb, unknown format) is shown as alt text.
        logger.info("attachment is not a usable image", exc_info=True)
        return None


class _Paragraph(Paragraph):
    """A Paragraph that keeps its line breaks for the last width it was given.

    Tables, keep-with-next groups and split cells measure the same text several times;
    reportlab would break every line again each time.
    """

    _wrapped_width: float | None = None

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        # ``split`` drops blPara when it gives up, so only a complete layout is reused.
        if availWidth == self._wrapped_width and "blPara" in self.__dict__:
            return self.width, self.height
        size: tuple[float, float] = super().wrap(availWidth, availHeight)
        self._wrapped_width = availWidth
        return size


class _FitImage(Flowable):
    """An image at its natural size (96 dpi), scaled down to the space it is given."""

    def __init__(self, image: _LoadedImage, max_height: float) -> None:
        super().__init__()
        self._image = image
        self._max_height = max_height
        self.hAlign = "CENTER"
        self.spaceBefore = 4
        self.spaceAfter = 8
        self.drawWidth = 0.0
        self.drawHeight = 0.0

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        natural_w = self._image.width_px * 0.75
        natural_h = self._image.height_px * 0.75
        scale = min(1.0, max(availWidth, 1.0) / natural_w, self._max_height / natural_h)
        self.drawWidth = natural_w * scale
        self.drawHeight = natural_h * scale
        return self.drawWidth, self.drawHeight

    def draw(self) -> None:
        self.canv.drawImage(self._image.reader, 0, 0, self.drawWidth, self.drawHeight, mask="auto")


class _CodeBlock(Flowable):
    """Monospaced literal text on a shaded box: long lines wrap, long blocks split by line."""

    PAD_X = 6.0
    PAD_Y = 5.0

    def __init__(
        self,
        lines: list[str],
        size: float,
        leading: float,
        *,
        top: bool = True,
        bottom: bool = True,
    ) -> None:
        super().__init__()
        self._lines = lines
        self._size = size
        self._leading = leading
        self._top = top
        self._bottom = bottom
        self._char_width = stringWidth("M", MONO, size)
        self._wrapped: tuple[float, list[str]] | None = None
        self.spaceBefore = 3
        self.spaceAfter = 9

    def _lines_for(self, width: float) -> list[str]:
        if self._wrapped is not None and self._wrapped[0] == width:
            return self._wrapped[1]
        per_line = max(1, int((width - 2 * self.PAD_X) // self._char_width))
        wrapped: list[str] = []
        for line in self._lines:
            if len(line) <= per_line:
                wrapped.append(line)
            else:
                wrapped.extend(line[i : i + per_line] for i in range(0, len(line), per_line))
        self._wrapped = (width, wrapped)
        return wrapped

    def _padding(self) -> float:
        return self.PAD_Y * (int(self._top) + int(self._bottom))

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        lines = self._lines_for(availWidth)
        self.width = availWidth
        self.height = len(lines) * self._leading + self._padding()
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:
        lines = self._lines_for(availWidth)
        room = availHeight - (self.PAD_Y if self._top else 0.0)
        count = min(int(room // self._leading), len(lines) - 1)
        if count < 1:
            return []
        head = _CodeBlock(lines[:count], self._size, self._leading, top=self._top, bottom=False)
        tail = _CodeBlock(lines[count:], self._size, self._leading, top=False, bottom=self._bottom)
        head.spaceAfter = 0
        tail.spaceBefore = 0
        return [head, tail]

    def draw(self) -> None:
        canv = self.canv
        lines = self._lines_for(self.width)
        canv.saveState()
        canv.setFillColor(CODE_BG)
        canv.rect(0, 0, self.width, self.height, stroke=0, fill=1)
        canv.setFillColor(TEXT)
        text = canv.beginText()
        first_baseline = (
            self.height
            - (self.PAD_Y if self._top else 0.0)
            - self._leading
            + (self._leading - self._size) / 2
            + self._size * 0.22
        )
        text.setTextOrigin(self.PAD_X, first_baseline)
        text.setFont(MONO, self._size, self._leading)
        for line in lines:
            text.textLine(line)
        canv.drawText(text)
        canv.restoreState()


def _keeps_with_next(flowable: Flowable) -> int:
    """What ``Flowable.getKeepWithNext`` answers (untyped in reportlab's stubs)."""
    style = getattr(flowable, "style", None)
    return int(getattr(flowable, "keepWithNext", getattr(style, "keepWithNext", 0)))


class _Quoted(Flowable):
    """A flowable indented behind a vertical bar; splits wherever its content splits."""

    INDENT = 12.0
    BAR_X = 2.0

    def __init__(self, inner: Flowable) -> None:
        super().__init__()
        self._inner = inner
        # The content's own spacing is drawn inside the bar so stacked blocks join up.
        self._above = inner.getSpaceBefore()
        self._below = inner.getSpaceAfter()
        self.keepWithNext = _keeps_with_next(inner)
        self._inner_height = 0.0

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        _, self._inner_height = self._inner.wrapOn(
            self.canv, availWidth - self.INDENT, availHeight - self._above - self._below
        )
        self.width = availWidth
        self.height = self._above + self._inner_height + self._below
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:
        parts = self._inner.splitOn(
            self.canv, availWidth - self.INDENT, availHeight - self._above - self._below
        )
        return [_Quoted(part) for part in parts]

    def draw(self) -> None:
        canv = self.canv
        canv.saveState()
        canv.setStrokeColor(RULE)
        canv.setLineWidth(2.5)
        canv.line(self.BAR_X, 0, self.BAR_X, self.height)
        canv.restoreState()
        self._inner.drawOn(canv, self.INDENT, self._below)


def _table_style(header_rows: int) -> TableStyle:
    commands: list[tuple[Any, ...]] = [
        ("GRID", (0, 0), (-1, -1), 0.5, RULE),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("LEFTPADDING", (0, 0), (-1, -1), 5),
        ("RIGHTPADDING", (0, 0), (-1, -1), 5),
        ("TOPPADDING", (0, 0), (-1, -1), 3),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 4),
    ]
    if header_rows:
        commands.append(("BACKGROUND", (0, 0), (-1, header_rows - 1), HEADER_BG))
    return TableStyle(commands)


_Measured: TypeAlias = tuple[float, float, list[float]]  # width, header height, row heights


class _RowsTable(Flowable):
    """A table laid out a page at a time; the header row repeats at the top of each page.

    Each row is measured once, so a long table costs linear time (reportlab's own Table
    re-measures every remaining row at each page break).
    """

    def __init__(
        self,
        header: list[list[Any]],
        body: list[list[Any]],
        fractions: list[float],
        *,
        show_header: bool = True,
        measured: _Measured | None = None,
    ) -> None:
        super().__init__()
        self._header = header
        self._body = body
        self._fractions = fractions
        self._show_header = show_header and bool(header)
        self._measured = measured
        self._avail_width = 0.0
        self.hAlign = "LEFT"
        self.spaceBefore = 4
        self.spaceAfter = 10

    def _table(self, rows: list[list[Any]], width: float, *, header: bool) -> Table:
        data = [*self._header, *rows] if header else rows
        table = Table(
            data,
            colWidths=[fraction * width for fraction in self._fractions],
            repeatRows=len(self._header) if header else 0,
            splitByRow=1,
            splitInRow=1,
            hAlign="LEFT",
        )
        table.setStyle(_table_style(len(self._header) if header else 0))
        return table

    def _measure(self, width: float) -> _Measured:
        if self._measured is None or self._measured[0] != width:
            unbounded = 1e9
            header = 0.0
            if self._header:
                header = self._table([], width, header=True).wrapOn(self.canv, width, unbounded)[1]
            heights = [
                self._table([row], width, header=False).wrapOn(self.canv, width, unbounded)[1]
                for row in self._body
            ]
            self._measured = (width, header, heights)
        return self._measured

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        if min(self._fractions) * availWidth < MIN_COLUMN_WIDTH:
            # Deeply indented: the safe layout prints the table as text instead.
            raise LayoutError("table columns narrower than their padding")
        _, header, heights = self._measure(availWidth)
        self._avail_width = availWidth
        self.width = sum(self._fractions) * availWidth
        self.height = (header if self._show_header else 0.0) + sum(heights)
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:
        width, header, heights = self._measure(availWidth)
        top = header if self._show_header else 0.0
        count, used = 0, top
        for height in heights:
            if used + height > availHeight:
                break
            used += height
            count += 1
        if count >= len(heights):
            return [self._table(self._body, width, header=self._show_header)]
        if count > 0:
            # Rest goes to the next page, where it starts with the header; but a row taller
            # than a page is cut right here, below these rows, so it takes no header.
            giant_next = header + heights[count] > BLOCK_MAX_HEIGHT
            rest = _RowsTable(
                self._header,
                self._body[count:],
                self._fractions,
                show_header=not giant_next,
                measured=(width, header, heights[count:]),
            )
            return [self._table(self._body[:count], width, header=self._show_header), rest]
        if header + heights[0] <= BLOCK_MAX_HEIGHT:
            # The row fits on the next page: go there, and start it with the header.
            self._show_header = bool(self._header)
            return []
        # A row taller than a page: reportlab cuts it inside its cells.
        parts: list[Flowable] = self._table(
            self._body[:1], width, header=self._show_header
        ).splitOn(self.canv, availWidth, availHeight)
        if parts and not self._show_header and self._header:
            # Its continuation starts new pages, which must show the header.
            heading = partial(self._table, [], width, header=True)
            parts = [parts[0], *(_UnderHeader(heading, part) for part in parts[1:])]
        if not parts or len(self._body) == 1:
            return parts
        rest = _RowsTable(
            self._header,
            self._body[1:],
            self._fractions,
            show_header=False,
            measured=(width, header, heights[1:]),
        )
        return [*parts, rest]

    def draw(self) -> None:
        table = self._table(self._body, self._avail_width, header=self._show_header)
        table.wrapOn(self.canv, self._avail_width, self.height)
        table.drawOn(self.canv, 0, 0)


class _UnderHeader(Flowable):
    """The part of a cut table row that continues on a new page, under the table's header."""

    def __init__(self, heading: Callable[[], Table], body: Flowable) -> None:
        super().__init__()
        self._heading = heading
        self._body = body
        self._header_height = 0.0
        self.hAlign = "LEFT"

    def wrap(self, availWidth: float, availHeight: float) -> tuple[float, float]:
        width, self._header_height = self._heading().wrapOn(self.canv, availWidth, availHeight)
        _, body_height = self._body.wrapOn(self.canv, availWidth, availHeight)
        self.width = width
        self.height = self._header_height + body_height
        return self.width, self.height

    def split(self, availWidth: float, availHeight: float) -> list[Flowable]:
        self.wrap(availWidth, availHeight)
        room = availHeight - self._header_height
        parts = self._body.splitOn(self.canv, availWidth, room)
        return [_UnderHeader(self._heading, part) for part in parts]

    def draw(self) -> None:
        heading = self._heading()
        heading.wrapOn(self.canv, self.width, self._header_height)
        heading.drawOn(self.canv, 0, self.height - self._header_height)
        self._body.drawOn(self.canv, 0, 0)


class _KeepWithNext(KeepTogether):
    """Keeps headings with the start of the next block rather than moving a long block whole."""

    def __init__(self, flowables: list[Flowable], maxHeight: float | None = None) -> None:
        super().__init__(flowables, maxHeight)
        self._kept = list(flowables)

    def split(self, aW: float, aH: float) -> list[Flowable]:
        *leading, last = self._kept
        used = 0.0
        for flowable in leading:
            used += flowable.wrapOn(self.canv, aW, aH)[1]
            used += flowable.getSpaceBefore() + flowable.getSpaceAfter()
        used += last.getSpaceBefore()
        if leading and used < aH and last.wrapOn(self.canv, aW, aH)[1] > aH - used:
            parts: list[Flowable] = last.splitOn(self.canv, aW, aH - used)
            if parts:
                return [*leading, *parts]
        result: list[Flowable] = super().split(aW, aH)
        return result


# --- Markdown to flowables -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """Paragraph markup; ``joined`` when it continues a longer paragraph cut for speed."""

    markup: str
    joined_before: bool = False
    joined_after: bool = False


class _InlineMarkup:
    """Paragraph markup built from inline nodes; images break it into separate blocks."""

    def __init__(self) -> None:
        self.parts: list[_Run | Flowable] = []
        self._buffer: list[str] = []
        self._has_text = False
        self._chars = 0
        self._joined = False
        self._open: list[tuple[str, str]] = []

    def plain(self, text: str) -> None:
        """Adds user text, cutting very long paragraphs into runs at spaces."""
        while self._chars + len(text) > PARAGRAPH_CHUNK_CHARS:
            room = PARAGRAPH_CHUNK_CHARS - self._chars
            cut = text.rfind(" ", 0, room)
            if cut <= 0 and self._chars == 0:
                cut = room  # one endless word: it wraps by character anyway
            if cut > 0:
                self.text(_esc(text[:cut]))
                text = text[cut:]
            self._break(joined=True)
        self.text(_esc(text), visible=bool(text.strip()))

    def text(self, markup: str, *, visible: bool = True) -> None:
        self._buffer.append(markup)
        self._chars += len(markup)
        self._has_text = self._has_text or visible

    def push(self, opening: str, closing: str) -> None:
        self._buffer.append(opening)
        self._open.append((opening, closing))

    def pop(self) -> None:
        self._buffer.append(self._open.pop()[1])

    def block(self, flowable: Flowable) -> None:
        self._break(joined=False)
        self.parts.append(flowable)

    def finish(self) -> list[_Run | Flowable]:
        self._buffer.extend(closing for _, closing in reversed(self._open))
        self._open = []
        self._flush(joined_after=False)
        return self.parts

    def _break(self, *, joined: bool) -> None:
        # Close the open tags here and reopen them after, so every run stays balanced.
        self._buffer.extend(closing for _, closing in reversed(self._open))
        self._flush(joined_after=joined)
        self._buffer = [opening for opening, _ in self._open]

    def _flush(self, *, joined_after: bool) -> None:
        if self._has_text:
            markup = "".join(self._buffer).strip()
            self.parts.append(_Run(markup, self._joined, joined_after))
            self._joined = joined_after
        self._buffer = []
        self._has_text = False
        self._chars = 0


def _plain(node: SyntaxTreeNode) -> str:
    """The text of an inline subtree without markup (alt text, cell widths)."""
    if node.type in ("text", "code_inline", "html_inline"):
        return node.content
    if node.type in ("softbreak", "hardbreak"):
        return " "
    return "".join(_plain(child) for child in node.children)


def _shorten(text: str) -> str:
    if len(text) <= SOURCE_SHOWN_CHARS:
        return text
    return text[: SOURCE_SHOWN_CHARS - 1] + "…"


class _Renderer:
    """Turns a markdown-it syntax tree into Platypus flowables."""

    def __init__(
        self,
        images: Mapping[str, ImageSource],
        loaded: dict[str, _LoadedImage | None],
        *,
        safe: bool,
    ) -> None:
        self._s = _styles()
        self._images = images
        self._loaded = loaded
        self._safe = safe
        self._list_depth = 0

    # blocks

    def blocks(
        self, nodes: Sequence[SyntaxTreeNode], style: ParagraphStyle, *, max_image: float
    ) -> list[Flowable]:
        out: list[Flowable] = []
        for node in nodes:
            kind = node.type
            if kind == "paragraph":
                out.extend(self._paragraphs(node, style, max_image))
            elif kind == "heading":
                level = int(node.tag[1]) if node.tag[1:].isdigit() else 1
                out.extend(self._paragraphs(node, self._s.headings[level - 1], max_image))
            elif kind in ("bullet_list", "ordered_list"):
                out.append(self._list(node, max_image))
            elif kind == "blockquote":
                quoted = self.blocks(node.children, style, max_image=max_image)
                out.extend(_Quoted(flowable) for flowable in quoted)
            elif kind in ("fence", "code_block", "html_block"):
                out.append(self._code(node.content))
            elif kind == "hr":
                out.append(
                    HRFlowable(
                        width="100%", thickness=0.8, color=RULE, spaceBefore=6, spaceAfter=10
                    )
                )
            elif kind == "table":
                out.extend(self._table(node))
            else:
                out.extend(self.blocks(node.children, style, max_image=max_image))
        return out

    def _paragraphs(
        self, node: SyntaxTreeNode, style: ParagraphStyle, max_image: float
    ) -> list[Flowable]:
        return self._flowables(self._inline_parts(node, max_image), style)

    def _flowables(self, parts: list[_Run | Flowable], style: ParagraphStyle) -> list[Flowable]:
        out: list[Flowable] = []
        for part in parts:
            if isinstance(part, _Run):
                spaced = _spaced(style, before=not part.joined_before, after=not part.joined_after)
                out.append(_Paragraph(part.markup, spaced))
            else:
                out.append(part)
        return out

    def _code(self, content: str) -> _CodeBlock:
        lines = content.removesuffix("\n").expandtabs(4).split("\n")
        return _CodeBlock(lines, self._s.code_size, self._s.code_leading)

    def _list(self, node: SyntaxTreeNode, max_image: float) -> ListFlowable:
        depth = self._list_depth
        self._list_depth += 1
        try:
            items: list[list[Flowable]] = []
            for item in node.children:
                content = self.blocks(item.children, self._s.item, max_image=max_image)
                items.append(content or [Spacer(1, self._s.item.leading)])
        finally:
            self._list_depth -= 1
        size = self._s.item.fontSize
        common: dict[str, Any] = {
            "bulletFontName": SANS,
            "bulletFontSize": size,
            "bulletColor": TEXT,
            "spaceBefore": 0,
            "spaceAfter": self._s.body.spaceAfter if depth == 0 else 0,
        }
        if node.type == "ordered_list":
            start = int(str(node.attrs.get("start", 1)))
            label = "%s" + (node.markup or ".")
            widest = stringWidth(label % (start + len(items) - 1), SANS, size)
            return ListFlowable(
                items,
                bulletType="1",
                start=start,
                bulletFormat=label,
                leftIndent=max(18.0, widest + 7),
                **common,
            )
        return ListFlowable(
            items,
            bulletType="bullet",
            start=BULLETS[depth % len(BULLETS)],
            leftIndent=14,
            **common,
        )

    def _table(self, node: SyntaxTreeNode) -> list[Flowable]:
        rows: list[list[SyntaxTreeNode]] = []
        header_rows = 0
        for section in node.children:
            for tr in section.children:
                rows.append(list(tr.children))
                if section.type == "thead":
                    header_rows += 1
        if not rows:
            return []
        columns = max(len(row) for row in rows)
        if self._safe or columns > MAX_TABLE_COLUMNS:
            return self._table_as_text(rows, header_rows)
        data: list[list[Any]] = []
        for index, cells_in_row in enumerate(rows):
            header = index < header_rows
            cells: list[Any] = []
            for cell in cells_in_row:
                style = _aligned(self._s.cell, _alignment(cell), header)
                parts = self._paragraphs(cell, style, CELL_IMAGE_MAX_HEIGHT)
                cells.append(parts[0] if len(parts) == 1 else parts or "")
            cells.extend("" for _ in range(columns - len(cells)))
            data.append(cells)
        fractions = _column_widths(rows, columns, self._s.cell)
        return [_RowsTable(data[:header_rows], data[header_rows:], fractions)]

    def _table_as_text(self, rows: list[list[SyntaxTreeNode]], header_rows: int) -> list[Flowable]:
        """A table as one paragraph per row, for tables too wide or too unwieldy to lay out."""
        headers = [_plain(cell).strip() for cell in rows[0]] if header_rows else []
        out: list[Flowable] = []
        for row in rows[header_rows:] or rows:
            markup = _InlineMarkup()
            for index, cell in enumerate(row):
                if index:
                    markup.text(" · ", visible=False)
                name = headers[index] if index < len(headers) and row is not rows[0] else ""
                if name:
                    markup.text(f"<b>{_esc(name)}:</b> ")
                markup.plain(_plain(cell))
            out.extend(self._flowables(markup.finish(), self._s.item))
        return out

    # inline

    def _inline_parts(self, node: SyntaxTreeNode, max_image: float) -> list[_Run | Flowable]:
        markup = _InlineMarkup()
        for child in node.children:
            self._inline(child, markup, max_image)
        return markup.finish()

    def _inline(self, node: SyntaxTreeNode, out: _InlineMarkup, max_image: float) -> None:
        kind = node.type
        if kind == "text" or kind == "html_inline":
            out.plain(node.content)
        elif kind == "softbreak":
            out.text(" ", visible=False)
        elif kind == "hardbreak":
            out.text("<br/>", visible=False)
        elif kind == "code_inline":
            code = re.sub(" {2,}", lambda m: "\u00a0" * len(m.group()), node.content)
            out.text(f'<font face="{MONO}" backColor="{CODE_BG.hexval()}">{_esc(code)}</font>')
        elif kind == "strong":
            self._wrapped(node, out, max_image, "<b>", "</b>")
        elif kind == "em":
            self._wrapped(node, out, max_image, "<i>", "</i>")
        elif kind == "link":
            self._link(node, out, max_image)
        elif kind == "image":
            self._image(node, out, max_image)
        else:
            for child in node.children:
                self._inline(child, out, max_image)

    def _wrapped(
        self, node: SyntaxTreeNode, out: _InlineMarkup, max_image: float, opening: str, closing: str
    ) -> None:
        out.push(opening, closing)
        for child in node.children:
            self._inline(child, out, max_image)
        out.pop()

    def _link(self, node: SyntaxTreeNode, out: _InlineMarkup, max_image: float) -> None:
        href = str(node.attrs.get("href", ""))
        if _CLICKABLE.match(href):
            opening = f'<a href="{_attr(href)}" color="{LINK.hexval()}">'
            self._wrapped(node, out, max_image, opening, "</a>")
        else:
            for child in node.children:
                self._inline(child, out, max_image)
        text = _plain(node).strip()
        if href and href not in (text, f"mailto:{text}"):
            out.text(f" ({_esc(_shorten(href))})")

    def _image(self, node: SyntaxTreeNode, out: _InlineMarkup, max_image: float) -> None:
        src = str(node.attrs.get("src", ""))
        alt = _plain(node).strip()
        ident = _attachment_id(src)
        loaded = self._load(ident) if ident is not None else None
        if loaded is not None:
            height = max_image / 2 if self._safe else max_image
            out.block(_FitImage(loaded, height))
            return
        label = f"[image: {alt}]" if alt else "[image]"
        out.text(f"<i>{_esc(label)}</i> ({_esc(_shorten(src))})")

    def _load(self, ident: str) -> _LoadedImage | None:
        if ident not in self._loaded:
            data = self._images.get(ident)
            self._loaded[ident] = _load_image(data) if data is not None else None
        return self._loaded[ident]


def _alignment(cell: SyntaxTreeNode) -> _Alignment:
    style = str(cell.attrs.get("style", ""))
    if "right" in style:
        return 2
    if "center" in style:
        return 1
    return 0


def _column_widths(
    rows: list[list[SyntaxTreeNode]], columns: int, style: ParagraphStyle
) -> list[float]:
    """Fractions of the frame width: natural widths when they fit, else fair shares."""
    padding = 10.0 + 3.0  # the cell padding, plus rounding slack so short words never wrap
    natural = [padding + 12.0] * columns
    for row in rows:
        for index, cell in enumerate(row):
            text = _plain(cell)
            width = stringWidth(text, SANS_BOLD, style.fontSize) + padding
            natural[index] = max(natural[index], min(width, FRAME_WIDTH))
    total = sum(natural)
    if total <= FRAME_WIDTH:
        return [width / FRAME_WIDTH for width in natural]
    fair = FRAME_WIDTH / columns
    given = [min(width, fair) for width in natural]
    wanting = [width - share for width, share in zip(natural, given, strict=True)]
    spare = FRAME_WIDTH - sum(given)
    need = sum(wanting)
    if need > 0:
        given = [share + spare * want / need for share, want in zip(given, wanting, strict=True)]
    return [width / FRAME_WIDTH for width in given]


# --- document ---------------------------------------------------------------------------------


class _NumberedCanvas(Canvas):
    """Holds each page until the end so its footer can say "Page X of Y"."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pages: list[dict[str, Any]] = []
        self.page_count = 0

    def showPage(self) -> None:
        self._pages.append(dict(self.__dict__))
        # Starts a fresh page without emitting this one yet (reportlab's own reset).
        self._startPage()  # type: ignore[attr-defined]

    def save(self) -> None:
        total = len(self._pages)
        for state in self._pages:
            self.__dict__.update(state)
            self._footer(total)
            super().showPage()
        self.page_count = total
        super().save()

    def _footer(self, total: int) -> None:
        self.saveState()
        self.setFont(SANS, 8.5)
        self.setFillColor(MUTED)
        self.drawCentredString(PAGE_WIDTH / 2, 10 * mm, f"Page {self.getPageNumber()} of {total}")
        self.restoreState()


def _build(story: list[Flowable], *, title: str, author: str) -> RenderedPdf:
    buffer = io.BytesIO()
    document = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=MARGIN_X,
        rightMargin=MARGIN_X,
        topMargin=MARGIN_TOP,
        bottomMargin=MARGIN_BOTTOM,
        title=title,
        author=author,
        creator="Folio",
        keepTogetherClass=_KeepWithNext,
        initialFontName=SANS,  # so no unembedded base-14 font is referenced either
        # Fixed dates and ids: one revision always exports to the same bytes.
        invariant=1,
    )
    canvases: list[_NumberedCanvas] = []

    def make_canvas(*args: Any, **kwargs: Any) -> _NumberedCanvas:
        canvas = _NumberedCanvas(*args, **kwargs)
        canvases.append(canvas)
        return canvas

    document.build(story, canvasmaker=make_canvas)
    return RenderedPdf(data=buffer.getvalue(), pages=canvases[-1].page_count)


def render_pdf(
    *, title: str, author: str, markdown: str, images: Mapping[str, ImageSource]
) -> RenderedPdf:
    """Renders a document to PDF; ``images`` maps attachment ids to their bytes."""
    _set_up_reportlab()
    styles = _styles()
    title = _clean(title).strip()
    author = _clean(author).strip()
    text = _clean(markdown)
    tree = SyntaxTreeNode(_MARKDOWN.parse(text))
    loaded: dict[str, _LoadedImage | None] = {}

    def story(body: list[Flowable]) -> list[Flowable]:
        heading = [_Paragraph(_esc(title), styles.title)] if title else []
        return [*heading, *body] or [Spacer(1, 1)]

    def blocks(*, safe: bool) -> list[Flowable]:
        renderer = _Renderer(images, loaded, safe=safe)
        return renderer.blocks(tree.children, styles.body, max_image=BLOCK_MAX_HEIGHT)

    for safe in (False, True):
        try:
            return _build(story(blocks(safe=safe)), title=title, author=author)
        except LayoutError:
            # The safe pass lays tables out as text and halves images, which always splits.
            logger.warning("PDF layout failed (safe=%s), retrying with a simpler layout", safe)
    # Last resort: the Markdown source as literal text, which splits at any line.
    source = text.expandtabs(4).split("\n")
    return _build(
        story([_CodeBlock(source, styles.code_size, styles.code_leading)]),
        title=title,
        author=author,
    )
