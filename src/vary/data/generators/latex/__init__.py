r"""LaTeX pages rendered by xelatex; the target is Mathpix-style markdown of exactly what the page shows.

Vary-base's pretraining added LaTeX-rendered pages: arXiv text, formulas and tables re-rendered through
10+ templates, ground truth in Mathpix markdown. This generator does the same from either
- generated content (default): TextCorpus paragraphs with inline formulas, random but valid display
  formulas (fractions, sums, integrals, aligned systems, cases, matrices), tabular tables and lists; or
- a folder of .tex files (`input_dir`): headings, paragraphs, display equations, tables and lists are cut
  out with regular expressions, as the paper did. A block that uses a macro we cannot render is dropped;
  a file that yields nothing (binary, not UTF-8, unbalanced braces, only unknown macros) is skipped with
  the reason.

Target format (Mathpix markdown), blocks separated by one blank line:
- paragraphs as plain text with `**bold**` / `*italic*`; a literal dollar sign is written `\$`;
- inline math `\( ... \)`; display math `\[`, the formula, `\]` on three lines (multi-line displays as
  `aligned`/`gathered`/`cases`/matrix environments inside `\[ \]`); displays are never numbered;
- headings `#` (document title) to `####`; lists as `- item` or `1. item`;
- tables as LaTeX `tabular` source, as Mathpix's own .mmd output does: it keeps alignment, rules and
  merged cells that a markdown pipe table would lose.

One page, exactly: every block ends with a marker that records, at shipout, the page where the block
ended. If the document spills onto a second page it is cut after the last block that ended on page 1
and compiled again, then checked to be one page. The image is that page rendered with PyMuPDF,
its longest side `size` pixels (the generator protocol's convention, as for the pdf and pages generators; the
model's processor resizes to its input).

Speed (~0.3-0.6 s per compile): the preamble loads only what the template needs, and the amount of
content is estimated from the template's geometry so that most pages need a single compile.

Modules: `blocks` (the block model), `formulas` (formula generator), `content` (generated page content),
`extract` (.tex extraction), `xelatex` (compiler, rendering, glyph coverage), `templates` (the page templates),
`generator` (`LatexGenerator`, the data-engine generator).
"""

from vary.data.generators.latex.blocks import Block, md_escape, tex_escape
from vary.data.generators.latex.content import ContentMaker, estimate_lines, page_lines
from vary.data.generators.latex.extract import extract_blocks, math_ok
from vary.data.generators.latex.formulas import Formulas
from vary.data.generators.latex.generator import LatexGenerator
from vary.data.generators.latex.xelatex import Xelatex, XelatexNotFoundError, glyph_checker

__all__ = ["Block", "ContentMaker", "Formulas", "LatexGenerator", "Xelatex", "XelatexNotFoundError", "estimate_lines",
           "extract_blocks", "glyph_checker", "math_ok", "md_escape", "page_lines", "tex_escape"]  # fmt: skip
