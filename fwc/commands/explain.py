"""`fwc explain FWC123`: a diagnostic code's rationale."""

from __future__ import annotations

import argparse
import sys

from fwc.checks import load_registry


def run(args: argparse.Namespace) -> int:
    registry = load_registry()
    if not args.code:
        for info in sorted(registry.values(), key=lambda i: i.code):
            print(f"{info.code}  {info.severity:<7}  {info.title}")
        return 0
    code = args.code.upper()
    if not code.startswith("FWC"):
        code = f"FWC{code}"
    info = registry.get(code)
    if info is None:
        print(f"fwc: unknown diagnostic code '{args.code}' (see 'fwc explain' for the list)",
              file=sys.stderr)
        return 2
    print(f"{info.code}: {info.title} ({info.severity}, {info.stage})\n\n{info.rationale}")
    return 0
