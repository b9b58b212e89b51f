"""Read a policy file and everything it includes, in order, with cycle detection."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fwc import syntax as s
from fwc.diagnostics import Diagnostic, Related, error
from fwc.parse import parse_text


@dataclass(frozen=True, slots=True)
class LoadedProgram:
    root: str
    files: tuple[s.SourceFile, ...]
    hashes: tuple[tuple[str, str], ...]  # (path, sha256) of every file read

    @property
    def texts(self) -> dict[str, str]:
        return {f.path: f.text for f in self.files}


def display_path(path: Path) -> str:
    """A path as the user should see it: relative to the working directory if inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load(path: str | Path, reader=None) -> tuple[LoadedProgram, list[Diagnostic]]:
    """Load `path` and its includes. `reader(Path) -> str` lets `fwc diff` read from git."""
    read = reader or (lambda p: p.read_text(encoding="utf-8"))
    diagnostics: list[Diagnostic] = []
    files: list[s.SourceFile] = []
    hashes: list[tuple[str, str]] = []
    loaded: set[Path] = set()
    root = Path(path)

    def visit(file: Path, stack: list[tuple[Path, s.Include | None]]) -> None:
        key = file.resolve() if reader is None else Path(str(file))
        shown = display_path(file) if reader is None else str(file)
        if key in loaded:
            return
        try:
            text = read(file)
        except (OSError, UnicodeDecodeError, KeyError) as exc:
            include = stack[-1][1] if stack else None
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            diagnostics.append(error(
                "FWC002", f"cannot read '{shown}': {reason}",
                include.span if include else None,
                hint="include paths are relative to the including file" if include else None))
            return
        loaded.add(key)
        hashes.append((shown, hashlib.sha256(text.encode()).hexdigest()))
        source, diags = parse_text(text, shown)
        diagnostics.extend(diags)
        files.append(source)
        for statement in source.statements:
            if not isinstance(statement, s.Include):
                continue
            target = file.parent / statement.path.text
            target_key = target.resolve() if reader is None else Path(str(target))
            chain = [p for p, _ in stack] + [key]
            if target_key in chain:
                cycle = " -> ".join(
                    [display_path(p) for p in chain[chain.index(target_key):]]
                    + [display_path(target_key)])
                diagnostics.append(error(
                    "FWC003", f"include cycle: {cycle}", statement.span,
                    hint="remove one of the includes in the cycle",
                    related=[Related(inc.span, "included here")
                             for _, inc in stack[1:] if inc is not None]))
                continue
            visit(target, [*stack, (key, statement)])

    visit(root, [])
    program = LoadedProgram(display_path(root) if reader is None else str(root),
                            tuple(files), tuple(hashes))
    return program, diagnostics
