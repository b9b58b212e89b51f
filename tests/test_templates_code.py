"""The generated code of the templates shipped in fwc/backend/render/templates.json
(fwc.backend.render.templates): fresh, deterministic, used, and never wrong."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest

from fwc.backend.render import templates

DATA = Path(templates.__file__).with_name(templates.DATA)
ROOT = Path(__file__).resolve().parents[1]


def test_committed_code_is_that_of_the_templates_and_jinja2() -> None:
    """Stale code only costs speed at run time, so this test is what notices it."""
    fresh = templates.generate()
    if os.environ.get("FWC_UPDATE_GOLDEN") == "1":
        DATA.write_text(fresh, encoding="utf-8")
    assert DATA.read_text(encoding="utf-8") == fresh, (
        "fwc/backend/render/templates.json is stale: run `python3 -m "
        "fwc.backend.render.templates > fwc/backend/render/templates.json` or this test "
        "with FWC_UPDATE_GOLDEN=1")


def test_the_code_is_the_same_bytes_under_any_string_hash_seed() -> None:
    outs = {subprocess.run([sys.executable, "-m", "fwc.backend.render.templates"],
                           check=True, capture_output=True, cwd=ROOT, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": seed,
                                "PYTHONPATH": str(ROOT)}).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1


def _generating(env: jinja2.Environment, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the templates ENV generates code for from now on."""
    generated: list[str] = []
    own = env._generate

    def counted(source: Any, name: str | None, *args: Any, **kwargs: Any) -> str:
        generated.append(str(name))
        return own(source, name, *args, **kwargs)
    monkeypatch.setattr(env, "_generate", counted)
    return generated


def test_every_template_comes_from_the_shipped_code(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = templates._environment(None)
    own = templates._environment({})
    generated = _generating(shipped, monkeypatch)
    assert own.loader is not None
    names = own.loader.list_templates()
    assert len(names) > 10
    for name in names:
        mine, theirs = shipped.get_template(name), own.get_template(name)
        assert mine.root_render_func.__code__.co_code == \
            theirs.root_render_func.__code__.co_code
        assert mine.filename == theirs.filename
    assert generated == []


def test_an_edited_template_is_generated_by_jinja2(monkeypatch: pytest.MonkeyPatch) -> None:
    code = templates.shipped(templates._fingerprint(templates._environment({})))
    assert code
    stale = {name: ("0" * 64, text) for name, (_, text) in code.items()}
    env = templates._environment(stale)
    generated = _generating(env, monkeypatch)
    env.get_template("sysctl.conf.j2")
    assert generated == ["sysctl.conf.j2"]


def test_code_for_another_environment_or_unreadable_is_not_used(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert templates.shipped("another jinja2 or other options") == {}
    raw = json.loads(DATA.read_text(encoding="utf-8"))
    for broken in ("{", "[]", json.dumps({"key": raw["key"], "templates": {"a": {}}})):
        (tmp_path / templates.DATA).write_text(broken, encoding="utf-8")
        monkeypatch.setattr(templates.resources, "files", lambda _package: tmp_path)
        assert templates.shipped(raw["key"]) == {}


def test_the_environment_uses_the_shipped_code() -> None:
    env = templates.environment()
    assert isinstance(env.loader, templates._Loader)
    assert env.loader._generated  # the committed file fits this jinja2


def test_a_filter_called_another_way_under_the_same_name_is_another_environment() -> None:
    # jinja2 writes how a filter is called (@pass_context ...) into the code it generates
    from fwc.backend.render.templates import _fingerprint, environment

    env = environment().overlay()
    env.filters = dict(env.filters)  # an overlay shares the dict: never touch the cached one
    before = _fingerprint(env)
    name, plain = next((n, f) for n, f in sorted(env.filters.items())
                       if getattr(f, "jinja_pass_arg", None) is None)

    @jinja2.pass_context
    def with_context(context: object, *args: object, **kwargs: object) -> object:
        return plain(*args, **kwargs)

    env.filters[name] = with_context
    assert _fingerprint(env) != before
    assert environment().filters[name] is plain
