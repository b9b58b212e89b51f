"""Diagnostics as SARIF 2.1.0 (`fwc check --format sarif`), for code-scanning services.

One run, one tool (`fwc`) whose rules are the registry's codes: each rule carries
its title, rationale and default level, so a code-scanning page explains a finding
without fwc installed. Paths stay as the diagnostics name them (relative to the
working directory, which in CI is the repository root) and are marked relative to
`%SRCROOT%` (left for the consumer to define, so the log does not depend on where
it was made); columns count Unicode code points, as fwc's spans do.
tests/test_sarif.py validates the output against the official schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import quote

from fwc import __version__
from fwc.checks import CheckInfo, load_registry
from fwc.diagnostics import Diagnostic, Severity, Span

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
# Where a rule is explained at length: the generated page of every code.
HELP_PAGE = "docs/checks.md"
_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.NOTE: "note"}


def _uri(file: str) -> tuple[str, bool]:
    """(URI reference, relative?) of a path as a diagnostic names it."""
    path = Path(file)
    if path.is_absolute():
        return path.as_uri(), False
    return quote(path.as_posix()), True


def _location(span: Span, message: str | None = None) -> dict[str, object]:
    uri, relative = _uri(span.file)
    artifact: dict[str, object] = {"uri": uri}
    if relative:
        artifact["uriBaseId"] = "%SRCROOT%"
    region: dict[str, object] = {"startLine": span.line, "startColumn": span.column}
    if span.end_line >= span.line:
        region["endLine"] = span.end_line
        if span.end_column > (span.column if span.end_line == span.line else 0):
            region["endColumn"] = span.end_column
    out: dict[str, object] = {"physicalLocation": {"artifactLocation": artifact,
                                                   "region": region}}
    if message is not None:
        out["message"] = {"text": message}
    return out


def _rule(info: CheckInfo) -> dict[str, object]:
    return {
        "id": info.code,
        "name": "".join(w.capitalize() for w in info.title.replace("-", " ").split()
                        if w.isalnum()) or info.code,
        "shortDescription": {"text": info.title},
        "fullDescription": {"text": info.rationale},
        "help": {"text": info.rationale},
        "helpUri": f"{HELP_PAGE}#{info.code.lower()}",
        "defaultConfiguration": {"level": _LEVEL[info.severity]},
        "properties": {"stage": info.stage},
    }


def sarif_log(diagnostics: Iterable[Diagnostic],
              registry: Mapping[str, CheckInfo] | None = None) -> dict[str, object]:
    """The SARIF log object of DIAGNOSTICS (every registered code is a rule)."""
    registry = load_registry() if registry is None else registry
    codes = sorted(registry)
    index = {code: number for number, code in enumerate(codes)}
    results: list[dict[str, object]] = []
    for d in diagnostics:
        result: dict[str, object] = {
            "ruleId": d.code,
            "level": _LEVEL[d.severity],
            "message": {"text": d.message + (f"\nhint: {d.hint}" if d.hint else "")},
        }
        if d.code in index:
            result["ruleIndex"] = index[d.code]
        if d.span is not None:
            result["locations"] = [_location(d.span)]
        if d.related:
            result["relatedLocations"] = [
                {"id": number, **_location(r.span, r.message)}
                for number, r in enumerate(d.related)]
        results.append(result)
    return {
        "$schema": SCHEMA,
        "version": SARIF_VERSION,
        "runs": [{
            "tool": {"driver": {
                "name": "fwc",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(registry[code]) for code in codes],
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    }


def render_sarif(diagnostics: Iterable[Diagnostic],
                 registry: Mapping[str, CheckInfo] | None = None) -> str:
    return json.dumps(sarif_log(diagnostics, registry), indent=2) + "\n"
