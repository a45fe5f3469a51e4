"""The HTML pages textft writes (the run report, its task sections, the comparison of runs) render from
jinja2 templates shipped in the package (``textft/templates/*.html.j2``, with the shared macros in
``macros.html.j2`` and the style sheet ``report.css``). Autoescape is on for every template: a value a
template prints is escaped, so a label, a text or a file name that holds markup reads as written and
never becomes part of the page. The Markdown twins (report.md, comparison.md, the model card) are built
in Python, each quoted value through ``report_parts.md_cell`` or ``md_code``.
"""

from __future__ import annotations

import base64
from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from textft.plots import css_width


def _base64(image: bytes) -> str:
    return base64.b64encode(image).decode("ascii")


@cache
def environment() -> Environment:
    """The one jinja2 environment of the pages: package templates, autoescape for every template
    (a template cannot opt out by its name), and an error for a name a template is not given."""
    env = Environment(loader=PackageLoader("textft", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    # num: a number in a format spec ("{{ x|num('.3f') }}"), as the Markdown twins write it
    env.filters.update(num=format, base64=_base64, css_width=css_width)
    return env


def render(template: str, **context) -> Markup:
    """The named template rendered with ``context``, as markup a page template prints as it is."""
    return Markup(environment().get_template(template).render(**context))
