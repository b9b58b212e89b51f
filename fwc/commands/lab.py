"""`fwc lab`: see fwc/lab/ and docs/lab.md."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from fwc.lab.cli import run_lab

    return run_lab(args)
