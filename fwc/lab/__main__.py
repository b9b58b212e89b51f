"""`python -m fwc.lab ...`: the lab without going through fwc's main CLI."""

from fwc.lab.cli import main

raise SystemExit(main())
