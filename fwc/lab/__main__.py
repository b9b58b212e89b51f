"""`python -m fwc.lab ...`: the lab without going through fwc's main CLI."""

from fwc.text import in_utf8_mode

in_utf8_mode()  # before the lab reads a policy: file names are UTF-8 (fwc.text)

from fwc.lab.cli import main  # noqa: E402 - after the restart, as `fwc` does

raise SystemExit(main())
