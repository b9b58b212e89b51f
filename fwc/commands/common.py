"""What several commands share: the diagnostics report in every `--format`, a
command runs without the cyclic garbage collector and hands what it built to the
process' end, check and compile open the user's result cache, fmt rewrites a policy and
graph and import write their `-o` FILE (all or nothing)."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import os
import secrets
import stat
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from fwc.cache import CacheRefused, ResultCache, open_cache
from fwc.diagnostics import Diagnostic, has_errors, print_diagnostics
from fwc.pipeline import Analysis, analyse


def report(diagnostics: Iterable[Diagnostic], texts: dict[str, str], fmt: str = "text") -> None:
    """Print DIAGNOSTICS as FMT: text (stderr), json, sarif or github (stdout)."""
    if fmt == "sarif":
        from fwc.checks.sarif import render_sarif

        sys.stdout.write(render_sarif(list(diagnostics)))
        return
    print_diagnostics(diagnostics, texts, fmt)


@contextmanager
def without_cycle_collection(args: argparse.Namespace | None = None) -> Iterator[None]:
    """Pause Python's cyclic garbage collector for one short-lived command.

    Analysing and compiling a large policy allocates millions of objects that all stay
    alive until the command ends, and almost none of them form cycles: every automatic
    collection traverses the whole growing heap for nothing (about 2 s of 8 s at 20,000
    rules, under 10 MB of garbage left to the end). Reference counting still frees
    everything else; collection is enabled again for in-process callers (tests).

    Not when the process ends right after the command (ARGS from fwc.cli.console, see
    `keep_until_exit`): every object the command allocated is still in the youngest
    generation, so the first allocation after enabling would traverse them all (about
    0.1 s at 20,000 rules) for memory the exit returns anyway.

    Nothing is frozen (`gc.freeze`) at the end: what a run derives (lowered rulesets,
    check flows) is memoised on that run's model (`model.Memo`), so it is freed with the
    model when the command returns instead of outliving it in a process-wide cache.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled and not ends_process(args):
            gc.enable()


def ends_process(args: argparse.Namespace | None) -> bool:
    """Whether the process ends right after the command of ARGS (fwc.cli.console)."""
    return getattr(args, "kept_until_exit", None) is not None


def keep_until_exit(args: argparse.Namespace, *objects: object) -> None:
    """Hand OBJECTS (what the command built: model, analysis, files) to the caller that
    ends the process without freeing them (fwc.cli.console, which says why); for any
    other caller of fwc.cli.main they are freed when the command returns, as usual."""
    kept = getattr(args, "kept_until_exit", None)
    if kept is not None:
        kept.extend(objects)


def result_cache(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) \
        -> ResultCache | None:
    """The user's result cache for check and compile (fwc.cache), or None.

    None with `--no-cache` or FWC_NO_CACHE=1, and when the cache directory cannot be
    trusted (another owner, group or other permissions, in the shared temporary
    directory): then one line on stderr says why and the command runs without it.
    """
    if getattr(args, "no_cache", False) or environ.get("FWC_NO_CACHE", "") not in ("", "0"):
        return None
    try:
        return open_cache(environ)
    except CacheRefused as exc:
        print(f"fwc: not using the cache: {exc}", file=sys.stderr)
        return None


def resolved(args: argparse.Namespace) -> Analysis | None:
    """ARGS.file parsed and resolved without the checks (query, graph): None, after the
    errors are printed, when it does not resolve."""
    analysis = analyse(args.file, run_checks=False, include_path=args.include_path)
    if analysis.policy is None or has_errors(analysis.diagnostics):
        print_diagnostics([d for d in analysis.diagnostics if d.is_error],
                          analysis.program.texts)
        return None
    return analysis


def write_file(path: Path, text: str, new_mode: int = 0o666) -> None:
    """TEXT (UTF-8) to PATH all or nothing: what `fmt`, `import -o` and `graph -o` write.

    Writing in place truncates first, so a full disk or a crash lost the end of the
    file. The text goes to a temporary file next to the target (a symbolic link is
    followed: it keeps pointing at the new file), is flushed to disk, and only then
    renamed over it; the rename is flushed too. An existing file keeps its mode and,
    where allowed, its owner; a new one gets NEW_MODE less the umask. An existing path
    that is not a regular file is refused (`refuse_special_file`), and the temporary
    file never outlives a failure or an interrupt.
    """
    target = Path(os.path.realpath(path))
    refuse_special_file(target)
    try:
        old: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        old = None
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.fwc-new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, new_mode)
    try:
        with os.fdopen(fd, "wb") as out:
            if old is not None:
                os.fchmod(out.fileno(), stat.S_IMODE(old.st_mode))
                with contextlib.suppress(PermissionError):
                    os.fchown(out.fileno(), old.st_uid, old.st_gid)
            out.write(text.encode("utf-8"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # The rename itself must reach the disk too, or a crash could bring back the old name.
    with contextlib.suppress(OSError):
        directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def refuse_special_file(path: Path) -> None:
    """OSError when PATH (a link followed) exists and is not a regular file.

    An `-o FILE` is written to a temporary file that is then renamed over PATH (never
    half a file), and a rename replaces whatever PATH is: `fwc graph -o /dev/null`, run
    as root, left a regular file where the device was, for every program on the machine.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise OSError(errno.EEXIST, "it exists and is not a regular file (leave -o out to "
                      "write to standard output)")
