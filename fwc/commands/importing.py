"""`fwc import iptables-save FILE [--cluster NAME] [-o OUT] [--verify]`."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
from pathlib import Path

from fwc.backend.output import compile_policy
from fwc.commands.common import write_file
from fwc.diagnostics import Diagnostic, Span, error, failed, print_diagnostics
from fwc.frontend.sources import MIB
from fwc.importing.fidelity import compare_texts
from fwc.importing.saved import Untranslatable
from fwc.importing.translate import import_file
from fwc.pipeline import analyse

# The grammar's NAME: the cluster's name is written into the policy as it is.
NAME = re.compile(r"[A-Za-z_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")
# The most of an iptables-save file read: far more than any ruleset a policy can hold (a
# policy file is at most 8 MiB), and `/dev/zero` stops here, not when memory runs out.
MAX_INPUT_BYTES = 64 * MIB


def run(args: argparse.Namespace) -> int:
    if not NAME.fullmatch(args.cluster):
        print(f"fwc import: --cluster {args.cluster!r} is not a name: letters, digits, '_' "
              "and '-' (not at the end), starting with a letter or '_'", file=sys.stderr)
        return 2
    path = args.file
    try:
        # bytes, decoded: a text-mode read would end a line at a lone "\r" too
        with contextlib.nullcontext(sys.stdin.buffer) if path == "-" else \
                open(path, "rb") as stream:
            data = stream.read(MAX_INPUT_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        print_diagnostics([error("FWC706", f"cannot read {path}: {reason}")], {})
        return 1
    if len(data) > MAX_INPUT_BYTES:
        print_diagnostics([error("FWC706", f"cannot read {path}: it is larger than "
                                 f"{MAX_INPUT_BYTES // MIB} MiB")], {})
        return 1
    result = import_file(text, path, args.cluster)
    diagnostics: list[Diagnostic] = list(result.diagnostics)
    texts = {path: text}
    if args.verify:
        diagnostics += verify(text, result.text, path)
    written = True
    if args.output:
        try:
            write_file(Path(args.output), result.text)
        except OSError as exc:
            print(f"fwc import: cannot write '{args.output}': {exc.strerror or exc}; "
                  "nothing was written", file=sys.stderr)
            written = False
    else:
        sys.stdout.write(result.text)
    print_diagnostics(diagnostics, texts)
    print(f"fwc import: {result.translated} rules translated, {result.kept_as_comments} kept "
          "as comments", file=sys.stderr)
    return 1 if failed(diagnostics, False) or not written else 0


def verify(original: str, policy_text: str, path: str) -> list[Diagnostic]:
    """FWC705 for every packet class the compiled import decides differently."""
    with tempfile.TemporaryDirectory(prefix="fwc-import-") as tmp:
        policy_file = Path(tmp) / "imported.fw"
        policy_file.write_text(policy_text, encoding="utf-8")
        analysis = analyse(policy_file)
        if not analysis.ok or analysis.policy is None:
            problems = [d for d in analysis.diagnostics if d.severity.name == "ERROR"]
            return [error("FWC705", "the imported policy does not check clean, so it cannot "
                          "be compared: " + "; ".join(d.message for d in problems[:3]))]
        compiled = compile_policy(analysis.policy)
        cluster = analysis.policy.clusters[0]
        member = cluster.member("fw1")  # the member whose rules are compared
        firewall = cluster.firewall_addresses(member).v4 if member is not None else ()
    files = {f.path: f.content.decode() for f in compiled[0].files}
    rules = files.get("ipsets.rules", "") + "\n" + files["fw1/iptables.rules"] \
        if "fw1/ipsets.rules" not in files else \
        files["fw1/ipsets.rules"] + "\n" + files["fw1/iptables.rules"]
    try:
        compared, differences = compare_texts(original, rules, firewall)
    except Untranslatable as exc:  # the proof reads every rule; the import kept some as comments
        where = Span(path, exc.line, 1, exc.line, 2) if exc.line else None
        return [error("FWC705", f"the original ruleset cannot be compared: {exc}", where,
                      hint="the rules kept as comments (FWC700) are not in the imported "
                      "policy: decide them, then compare")]
    out = [error("FWC705", f"{d.where}: {d.packet}: original {d.original}, "
                           f"fwc {d.compiled}") for d in differences]
    print(f"fwc import --verify: {compared} packet classes compared, "
          f"{len(differences)} differences", file=sys.stderr)
    return out
