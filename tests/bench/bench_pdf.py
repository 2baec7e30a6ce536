"""PDF export: how long a document of about 100 pages takes to render (target: under 2 s).

The document mixes what real ones hold: headings, paragraphs with inline markup, nested
lists, tables and code blocks. Reported: the median of a few renders and the page count.
Run with ``make bench`` or ``python -m tests.bench.bench_pdf``.
"""

import statistics
import time

from services.document.pdf import render_pdf

RUNS = 5
SECTIONS = 43
TARGET_SECONDS = 2.0

WORDS = (
    "folio keeps every revision of a document so that any earlier text can be read and "
    "restored, and it exports the current revision to a portable file with its tables, "
    "lists, code and images laid out for print Καλημέρα Привет façade"
).split()


def sentence(seed: int, words: int) -> str:
    picked = [WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(words)]
    return " ".join(picked).capitalize() + "."


def paragraph(seed: int) -> str:
    text = " ".join(sentence(seed + i, 12 + (seed + i) % 9) for i in range(5))
    return (
        text.replace(" the ", " **the** ", 1).replace(" any ", " *any* ", 1) + " See `render_pdf`."
    )


def section(index: int) -> str:
    """One section, about three pages: Markdown blocks separated by blank lines."""
    blocks = [f"## Section {index}: {sentence(index, 5)}"]
    blocks += [paragraph(index * 10 + i) for i in range(4)]
    blocks.append(f"### Steps for section {index}")
    steps = []
    for i in range(1, 6):
        steps.append(f"{i}. {sentence(index + i, 10)}")
        steps.append(f"   - {sentence(index + i + 1, 8)}")
        steps.append(f"     - {sentence(index + i + 2, 6)}")
    blocks.append("\n".join(steps))
    table = ["| Name | Revision | Words | Note |", "|:-----|---------:|------:|:-----|"]
    for row in range(12):
        table.append(
            f"| doc-{index}-{row} | {row + 1} | {index * 100 + row} | {sentence(row, 6)} |"
        )
    blocks.append("\n".join(table))
    code = ["```python"]
    for line in range(14):
        code.append(f"def step_{index}_{line}(document):  # {sentence(line, 4)}")
        code.append(f"    return document.revision + {line}")
    code.append("```")
    blocks.append("\n".join(code))
    blocks += [paragraph(index * 10 + 5 + i) for i in range(3)]
    blocks.append("> " + paragraph(index + 99))
    return "\n\n".join(blocks)


def document() -> str:
    return "\n\n".join(section(i) for i in range(1, SECTIONS + 1))


def main() -> None:
    markdown = document()
    render_pdf(title="Warm-up", author="Folio bench", markdown="# Warm-up", images={})
    timings = []
    pages = 0
    for _ in range(RUNS):
        started = time.perf_counter()
        rendered = render_pdf(title="Benchmark", author="Folio bench", markdown=markdown, images={})
        timings.append(time.perf_counter() - started)
        pages = rendered.pages
    median = statistics.median(timings)
    verdict = "ok" if median < TARGET_SECONDS else "SLOW"
    print(
        f"render_pdf: {pages} pages, {len(markdown) / 1024:.0f} KiB of Markdown, "
        f"median {median:.2f} s over {RUNS} runs (target < {TARGET_SECONDS:.0f} s: {verdict})"
    )


if __name__ == "__main__":
    main()
