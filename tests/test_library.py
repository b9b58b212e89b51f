"""The standard object library shipped with fwc: `include <std/services.fw>`.

Package data is the one place outside the policy tree fwc reads, only through
`<...>`, read-only, and nothing a library file includes may leave it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from conftest import EDGE_TEXT as EDGE
from conftest import REPO, run_fwc

from fwc.frontend.loader import _Library, load
from fwc.frontend.sources import LIBRARY_ROOT
from fwc.pipeline import analyse

STD = sorted((LIBRARY_ROOT / "std").glob("*.fw"))


def std_edge() -> str:
    """edge.fw with its own services replaced by the library's."""
    body = "\n".join(line for line in EDGE.splitlines()
                     if not line.startswith("service ") or line.split()[1] in ("echo", "ident"))
    body = body.replace("service web ", "service http, https ").replace(
        "service web,", "service http, https,").replace("service web in", "service http, "
                                                          "https in")
    return "include <std/services.fw>\ninclude <std/bogons.fw>\n\n" + body + "\n"


def codes(analysis) -> list[str]:
    return [d.code for d in analysis.diagnostics]


@pytest.mark.parametrize("path", STD, ids=lambda p: p.name)
def test_every_shipped_file_checks_clean_and_silent(path, tmp_path):
    policy = tmp_path / "p.fw"
    policy.write_text(f"include <std/{path.name}>\n")
    analysis = analyse(policy)
    assert analysis.ok and codes(analysis) == []


def test_policy_using_the_library_compiles_and_names_it_in_the_manifest(tmp_path):
    policy = tmp_path / "edge.fw"
    policy.write_text(std_edge())
    policy.write_text(policy.read_text() + "host lonely 192.0.2.77\n")
    analysis = analyse(policy)
    assert analysis.ok, [str(d) for d in analysis.diagnostics]
    # only the policy's own unused object is reported, none of the library's
    unused = [d for d in analysis.diagnostics if d.code == "FWC103"]
    assert [d.span.file for d in unused if d.span] == [str(policy)]  # absolute: outside cwd
    for cwd in (tmp_path, REPO):
        out = tmp_path / f"out-{cwd.name}"
        done = run_fwc("compile", str(policy), "-o", str(out), cwd=cwd, clean_env=True,
                       timeout=120)
        assert done.returncode == 0, done.stderr
    manifest = (tmp_path / f"out-{tmp_path.name}" / "edge" / "MANIFEST").read_text()
    assert "  <std/services.fw>\n" in manifest and "  <std/bogons.fw>\n" in manifest
    assert "  <std/networks.fw>\n" in manifest  # included by bogons.fw
    # the same bytes wherever fwc runs from (no installation path in the output)
    assert manifest == (tmp_path / f"out-{REPO.name}" / "edge" / "MANIFEST").read_text()
    rules = (tmp_path / f"out-{tmp_path.name}" / "edge" / "fw1" / "iptables.rules").read_text()
    assert re.search(r"--dports? [0-9,]*\b443\b", rules)


def test_an_include_path_directory_extends_and_shadows_the_library(tmp_path):
    site = tmp_path / "site-lib"
    (site / "site").mkdir(parents=True)
    (site / "site" / "hq.fw").write_text("network hq 198.51.100.0/24\n")
    (site / "std").mkdir()
    (site / "std" / "services.fw").write_text("service ssh tcp/2222\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    policy = repo / "p.fw"
    policy.write_text("include <site/hq.fw>\ninclude <std/services.fw>\n")
    program, diagnostics = load(policy, include_path=[site])
    assert diagnostics == []
    texts = program.texts
    assert any("network hq" in t for t in texts.values())
    assert any("tcp/2222" in t for t in texts.values())  # the user's copy wins
    assert not any(name.startswith("<") for name in texts)
    assert program.libraries == frozenset(texts) - {program.root}


def _site_library(where: Path) -> Path:
    """An --include-path directory at WHERE: <site/rules.fw> with a rule, which includes
    objects.fw beside it."""
    (where / "site").mkdir(parents=True)
    (where / "site" / "rules.fw").write_text(
        'include "objects.fw"\npolicy edge {\n    accept from client to partner service ssh\n}\n')
    (where / "site" / "objects.fw").write_text("host partner 198.51.100.77\n")
    return where


def test_files_of_an_include_path_directory_are_named_alike_wherever_it_is(tmp_path):
    """The MANIFEST and the rule comments named a file of an --include-path directory
    outside the repository by its way from the policy's directory: the same policy gave
    `../../home/alice/fwc-site/site/rules.fw` on a laptop and another path in CI (and
    showed the user's home). They name it as `include <...>` does, as fwc's own library."""
    repo = tmp_path / "repo"
    (repo / "pol").mkdir(parents=True)
    policy = repo / "pol" / "edge.fw"
    # (the site's rules come after the policy's own: no catch-all drop before them)
    policy.write_text("include <site/rules.fw>\n" + EDGE.replace(
        '    drop   from any      to any      log "default"\n', ""))
    here = _site_library(tmp_path / "home" / "alice" / "fwc-site")
    there = _site_library(tmp_path / "opt" / "x" / "y")
    trees = []
    for cwd, library in ((repo / "pol", here), (tmp_path, there)):
        out = tmp_path / f"out-{len(trees)}"
        done = run_fwc("compile", str(policy), "-o", str(out), "--include-path",
                       str(library), cwd=cwd, clean_env=True, timeout=120)
        assert done.returncode == 0, done.stderr
        trees.append({str(p.relative_to(out)): p.read_bytes()
                      for p in sorted(out.rglob("*")) if p.is_file()})
    assert trees[0] == trees[1]
    manifest = trees[0]["edge/MANIFEST"].decode()
    assert "  <site/rules.fw>\n" in manifest and "  <site/objects.fw>\n" in manifest
    assert "  edge.fw\n" in manifest
    rules = trees[0]["edge/fw1/iptables.rules"].decode()
    assert '--comment "<site/rules.fw>:3"' in rules
    assert '--comment "edge.fw:' in rules
    assert not [name for name, data in trees[0].items() if b"alice" in data or b".." in data]


@pytest.mark.parametrize(("include", "code"), [
    ("<../etc/passwd.fw>", "FWC035"),
    ("<std/./services.fw>", "FWC035"),
    ("<std/services>", "FWC035"),
    ("<std/nope.fw>", "FWC036"),
])
def test_malformed_or_missing_library_names(tmp_path, include, code):
    policy = tmp_path / "p.fw"
    policy.write_text(f"include {include}\n")
    analysis = analyse(policy)
    [diagnostic] = analysis.diagnostics
    assert diagnostic.code == code and diagnostic.span is not None
    assert (diagnostic.span.line, diagnostic.span.column) == (1, 9)


def test_a_quoted_include_never_reaches_the_library(tmp_path):
    policy = tmp_path / "p.fw"
    policy.write_text('include "std/services.fw"\n')
    assert codes(analyse(policy)) == ["FWC002"]
    outside = tmp_path / "p2.fw"
    outside.write_text(f'include "{LIBRARY_ROOT / "std" / "services.fw"}"\n')
    assert codes(analyse(outside)) == ["FWC010"]


def test_nothing_a_library_file_includes_may_leave_the_library(tmp_path):
    library = _Library(LIBRARY_ROOT)
    refused = library.refuse(LIBRARY_ROOT / "std" / ".." / ".." / "cli.py", "../../cli.py")
    assert refused is not None and refused.code == "FWC010"
    assert library.refuse(LIBRARY_ROOT / "std" / "networks.fw", "networks.fw") is None
    # the same through a file of a user library directory (a root of its own)
    lib = tmp_path / "lib"
    (lib / "x").mkdir(parents=True)
    (lib / "x" / "evil.fw").write_text('include "/etc/hostname"\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "p.fw").write_text("include <x/evil.fw>\n")
    assert "FWC010" in codes(analyse(repo / "p.fw", include_path=[lib]))


def test_fmt_keeps_library_includes(tmp_path):
    done = run_fwc("fmt", "-", stdin="include   <std/services.fw>\nhost a 192.0.2.1\n",
                   clean_env=True)
    assert done.stdout == "include <std/services.fw>\nhost a 192.0.2.1\n", done.stderr


def test_diff_reads_the_library_from_disk_and_the_policy_from_git(tmp_path, monkeypatch,
                                                                  capsys):
    from fwc.cli import main

    root = tmp_path / "fw"
    (root / "policies").mkdir(parents=True)
    policy = root / "policies" / "edge.fw"
    policy.write_text(std_edge())

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)
    git("init", "-q")
    git("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q",
        "--allow-empty", "-m", "init")
    git("add", "-A")
    git("-c", "user.email=t@example.org", "-c", "user.name=t", "commit", "-q", "-m", "edge")
    monkeypatch.chdir(root)
    policy.write_text(policy.read_text().replace("service snmp  only fw1",
                                                 "service snmp, ssh  only fw1"))
    code = main(["diff", "--no-color", "--stat"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "newly allowed: from monitor to firewall service ssh" in out


def test_library_is_package_data_next_to_the_code():
    assert Path(__file__).resolve().parent.parent / "fwc" / "library" == LIBRARY_ROOT
    assert {p.name for p in STD} == {"services.fw", "networks.fw", "bogons.fw"}
