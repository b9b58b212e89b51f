"""The jinja2 environment of every template-based target (fwc/templates/*.j2).

Each target module builds a context that makes every decision; the templates
only lay the values out.
"""

from __future__ import annotations

from functools import cache

import jinja2

from fwc.backend.render import escape


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fwc", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files, not HTML; fwc.backend.render.escape instead
        # Every interpolated value, filtered or not, stays on its line: a value that
        # would break a line stops the compile instead of reaching a file.
        finalize=escape.line_text,
    )
    env.filters.update(escape.FILTERS)
    return env


def render_template(name: str, context: dict[str, object]) -> str:
    return environment().get_template(name).render(**context)
