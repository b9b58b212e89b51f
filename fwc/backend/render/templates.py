"""The jinja2 environment of every template-based target (fwc/templates/*.j2).

Each target module builds a context that makes every decision; the templates
only lay the values out.

The Python code jinja2 generates from each template ships with the package
(fwc/backend/render/templates.json, written by `python3 -m fwc.backend.render.templates
> fwc/backend/render/templates.json`): generating it took about 0.1 s of every compile,
compiling the shipped code takes a few milliseconds. A template's code is used only
when the template's text (its SHA-256) and the environment (jinja2's version, the
syntax and code-generation options: `_fingerprint`) are those it was generated from;
otherwise (a template edited, another jinja2, the file missing or unreadable) jinja2
generates the code as before: slower, never different. The file is part of the
package, like the templates themselves, never a cache written at run time.
tests/test_templates_code.py fails while the committed file is stale.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, MutableMapping
from functools import cache
from importlib import resources
from typing import Any

import jinja2

from fwc.backend.render import escape

DATA = "templates.json"


class _Loader(jinja2.PackageLoader):
    """fwc/templates, each template's generated code taken from GENERATED (name ->
    (SHA-256 of the template's text, the code jinja2 generates from it)) when it is
    the code of the template's text."""

    def __init__(self, generated: Mapping[str, tuple[str, str]]) -> None:
        super().__init__("fwc", "templates")
        self._generated = generated

    def load(self, environment: jinja2.Environment, name: str,
             globals: MutableMapping[str, Any] | None = None) -> jinja2.Template:  # noqa: A002
        source, filename, uptodate = self.get_source(environment, name)
        known = self._generated.get(name)
        if known is None or known[0] != _digest(source):
            return super().load(environment, name, globals)
        # what jinja2's own load does after generating the code (Environment._compile)
        code = compile(known[1], filename or "<template>", "exec")
        return environment.template_class.from_code(
            environment, code, {} if globals is None else globals, uptodate)


def _environment(generated: Mapping[str, tuple[str, str]] | None) -> jinja2.Environment:
    """The environment; GENERATED None: the shipped code when it fits, {}: none."""
    env = jinja2.Environment(
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
    env.loader = _Loader(shipped(_fingerprint(env)) if generated is None else generated)
    return env


@cache
def environment() -> jinja2.Environment:
    return _environment(None)


def render_template(name: str, context: dict[str, object]) -> str:
    return environment().get_template(name).render(**context)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _passes(function: Callable[..., Any] | None) -> str | None:
    """What jinja2 passes FUNCTION first (context, eval context, environment), if anything:
    the mark `jinja2.pass_context` and its siblings leave on it."""
    kind = getattr(function, "jinja_pass_arg", None)
    return None if kind is None else str(getattr(kind, "name", kind))


def _fingerprint(env: jinja2.Environment) -> str:
    """What the generated code depends on besides a template's text."""
    finalize: Callable[..., Any] | None = env.finalize
    options = [jinja2.__version__, env.block_start_string, env.block_end_string,
               env.variable_start_string, env.variable_end_string, env.comment_start_string,
               env.comment_end_string, env.line_statement_prefix, env.line_comment_prefix,
               env.trim_blocks, env.lstrip_blocks, env.newline_sequence,
               env.keep_trailing_newline, env.optimized, repr(env.autoescape),
               None if finalize is None else f"{finalize.__module__}.{finalize.__qualname__}",
               _passes(finalize), env.is_async,
               # how each filter and test is called (@pass_context and the like) is
               # written into the code too, not only its name
               sorted((name, _passes(f)) for name, f in env.filters.items()),
               sorted((name, _passes(f)) for name, f in env.tests.items()),
               sorted(env.extensions)]
    return _digest(json.dumps(options))


def shipped(fingerprint: str) -> dict[str, tuple[str, str]]:
    """The committed code of each template when made for FINGERPRINT, else nothing."""
    try:
        text = resources.files("fwc.backend.render").joinpath(DATA).read_text(encoding="utf-8")
        raw = json.loads(text)
        if not isinstance(raw, dict) or raw.get("key") != fingerprint:
            return {}
        return {name: (str(entry["sha256"]), str(entry["code"]))
                for name, entry in raw["templates"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def generate() -> str:
    """The text of templates.json: every template's generated code (deterministic)."""
    env = _environment({})
    assert env.loader is not None
    templates = {}
    for name in sorted(env.loader.list_templates()):
        source, filename, _ = env.loader.get_source(env, name)
        templates[name] = {"sha256": _digest(source),
                           "code": env.compile(source, name, filename, raw=True)}
    return json.dumps({"key": _fingerprint(env), "templates": templates}, indent=1,
                      sort_keys=True, ensure_ascii=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(generate())
