"""`python -m fwc`, and the `fwc` command's entry point (pyproject.toml).

Only this module is imported before the command's own code can catch an interrupt:
fwc.cli's imports take a noticeable part of a second, and a Ctrl-C in them printed
Python's traceback instead of fwc's one line (fwc.cli.console says it for the rest).
"""

import contextlib
import os
import sys
from typing import NoReturn


def utf8_command() -> list[str] | None:
    """This command again in Python's UTF-8 mode, when the locale's encoding is another
    one; None when it is UTF-8 (or the interpreter is not known).

    Python names files in the locale's encoding, and the mode is chosen at start-up
    only. Under a Latin-1 locale `include "lib/hé.fw"` opened another file than the
    policy names, and a policy `büro.fw` was `bÃ¼ro.fw` in its MANIFEST and every rule
    comment (another policy to the next compile). Policies, the names of their files
    and every generated file are UTF-8 (docs/language.md), whatever the locale."""
    if sys.flags.utf8_mode or sys.getfilesystemencoding() == "utf-8" or not sys.executable \
            or "utf8" in sys._xoptions:  # `-X utf8=0` asked for it: never started again
        return None
    # (the command line as the interpreter got it, interpreter options included)
    return [sys.executable, "-X", "utf8", *sys.orig_argv[1:]]


def in_utf8_mode() -> None:
    """Start this command again in Python's UTF-8 mode when it runs in another (every
    entry point: `fwc`, `python -m fwc`, `python -m fwc.lab`)."""
    again = utf8_command()
    if again is not None:
        with contextlib.suppress(OSError):  # not started: runs on as before
            os.execv(again[0], again)


def console() -> NoReturn:
    in_utf8_mode()
    try:
        from fwc.cli import console as run
    except KeyboardInterrupt:
        print("fwc: interrupted", file=sys.stderr)
        sys.stderr.flush()
        os._exit(130)
    run()


if __name__ == "__main__":
    console()
