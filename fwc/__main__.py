"""`python -m fwc`, and the `fwc` command's entry point (pyproject.toml).

Only this module is imported before the command's own code can catch an interrupt:
fwc.cli's imports take a noticeable part of a second, and a Ctrl-C in them printed
Python's traceback instead of fwc's one line (fwc.cli.console says it for the rest).
"""

import os
import sys
from typing import NoReturn

from fwc.text import in_utf8_mode


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
