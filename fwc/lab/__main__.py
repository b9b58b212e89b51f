"""`python -m fwc.lab ...`: the lab without going through fwc's main CLI."""

from fwc.__main__ import in_utf8_mode

in_utf8_mode()  # before the lab reads a policy: file names are UTF-8 (fwc.__main__)

from fwc.lab.cli import main  # noqa: E402 - after the restart, as `fwc` does

raise SystemExit(main())
