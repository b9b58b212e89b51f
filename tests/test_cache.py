"""The result cache (fwc.cache, issue 12): user-private, authenticated, byte-identical.

`fwc check` and `fwc compile` keep their results under a key of content hashes in
$XDG_CACHE_HOME/fwc; these tests give each one a private cache directory (never under
the shared temporary directory, which fwc refuses) and compare every cached answer
with the same command run with --no-cache. What `fwc compile` records of the files it
wrote, and when that answers, is tests/test_compile_record.py's.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EDGE, REPO, cannot_run, compile_to, file_tree, run_fwc

from fwc import cache as fwc_cache
from fwc.cli import main


def _entries(home: Path, kind: str) -> list[Path]:
    return sorted((home / "fwc").glob(f"{kind}-*"))


def _policy(tmp_path: Path, text: str | None = None) -> Path:
    work = tmp_path / "repo"
    work.mkdir(exist_ok=True)
    (work / ".git").mkdir(exist_ok=True)  # the repository the policy lives in
    path = work / "edge.fw"
    path.write_text(text if text is not None else EDGE.read_text(encoding="utf-8"),
                    encoding="utf-8")
    return path


def test_compile_with_the_cache_is_byte_identical(cache_home, tmp_path, capsys):
    policy = _policy(tmp_path)
    assert compile_to(policy, tmp_path / "first") == 0
    assert _entries(cache_home, "out") and _entries(cache_home, "analysis")
    first_print = capsys.readouterr().out
    assert compile_to(policy, tmp_path / "cached") == 0
    assert capsys.readouterr().out == first_print.replace("first", "cached")
    assert compile_to(policy, tmp_path / "plain", "--no-cache") == 0
    plain = file_tree(tmp_path / "plain")
    assert file_tree(tmp_path / "first") == plain == file_tree(tmp_path / "cached")
    # and the same as the committed golden output of the example
    golden = file_tree(REPO / "output" / "edge")
    ours = {k.removeprefix("edge/"): v for k, v in plain.items()}
    assert {k: v[0] for k, v in ours.items() if k != "MANIFEST"} == \
        {k: v[0] for k, v in golden.items() if k != "MANIFEST"}


def test_a_one_line_edit_is_compiled_again(cache_home, tmp_path):
    policy = _policy(tmp_path)
    assert compile_to(policy, tmp_path / "before") == 0
    text = policy.read_text(encoding="utf-8")
    assert "tcp/22" in text
    policy.write_text(text.replace("tcp/22", "tcp/2222", 1), encoding="utf-8")
    assert compile_to(policy, tmp_path / "after") == 0
    assert compile_to(policy, tmp_path / "plain", "--no-cache") == 0
    after = file_tree(tmp_path / "after")
    assert after == file_tree(tmp_path / "plain") != file_tree(tmp_path / "before")
    assert any(b"2222" in content for content, _ in after.values())


def test_a_changed_password_file_is_not_served_from_the_cache(cache_home, tmp_path):
    text = EDGE.read_text(encoding="utf-8")
    assert 'password "s3cret"' in text
    policy = _policy(tmp_path, text.replace('password "s3cret"', 'password file "vrrp.pw"'))
    secret = policy.parent / "vrrp.pw"
    secret.write_text("first1\n", encoding="utf-8")
    assert compile_to(policy, tmp_path / "one") == 0
    secret.write_text("second2\n", encoding="utf-8")
    assert compile_to(policy, tmp_path / "two") == 0
    conf = "edge/fw1/keepalived.conf"
    assert b"second2" in file_tree(tmp_path / "two")[conf][0]
    assert b"first1" in file_tree(tmp_path / "one")[conf][0]


def test_no_entry_keeps_a_digest_an_offline_search_would_undo(cache_home, tmp_path):
    """A plain sha256 of the password file, or of a keepalived.conf whose every other
    line is public, gives an 8-character password away: the entries key them."""
    text = EDGE.read_text(encoding="utf-8")
    policy = _policy(tmp_path, text.replace('password "s3cret"', 'password file "vrrp.pw"'))
    (policy.parent / "vrrp.pw").write_text("Pw0rd!\n", encoding="utf-8")
    out = tmp_path / "out"
    assert compile_to(policy, out) == 0
    conf = out / "edge" / "fw1" / "keepalived.conf"
    secret = [hashlib.sha256(data).hexdigest() for data in
              (b"Pw0rd!\n", b"Pw0rd!", conf.read_bytes(), (out / "edge/fw2/keepalived.conf")
               .read_bytes())]
    entries = [p for p in (cache_home / "fwc").iterdir() if p.name != "key"]
    # (patch: what a patch compile of the next edit starts from, fwc.backend.patch)
    assert {p.name.partition("-")[0] for p in entries} == {"analysis", "src", "out", "patch"}
    for entry in entries:
        data = entry.read_bytes()
        assert not any(digest.encode() in data for digest in secret), entry.name
        assert b"Pw0rd!" not in data
    # still answered from the cache, and a password edited into the file still noticed
    before = conf.stat().st_ino
    assert compile_to(policy, out) == 0
    assert conf.stat().st_ino == before
    conf.write_bytes(conf.read_bytes().replace(b"Pw0rd!", b"Pw0rd?"))
    assert compile_to(policy, out) == 0
    assert b"Pw0rd!" in conf.read_bytes()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_check_from_the_cache_says_the_same(cache_home, tmp_path, capsys, monkeypatch, fmt):
    # A policy with warnings and errors of the checks (shadowing, parity, ...).
    text = EDGE.read_text(encoding="utf-8")
    policy = _policy(tmp_path, text.replace("policy edge {", "policy edge {\n"
                                            "    drop from any to any\n", 1))
    monkeypatch.chdir(policy.parent)
    runs = []
    for extra in (["--no-cache"], [], []):
        status = main(["check", policy.name, "--format", fmt, *extra])
        captured = capsys.readouterr()
        runs.append((status, captured.out, captured.err))
    assert runs[0] == runs[1] == runs[2]
    assert "FWC40" in runs[0][1] + runs[0][2]  # the checks did find something
    assert _entries(cache_home, "analysis")


def test_no_cache_neither_reads_nor_writes(cache_home, tmp_path):
    policy = _policy(tmp_path)
    assert compile_to(policy, tmp_path / "out", "--no-cache") == 0
    assert main(["check", str(policy), "--no-cache"]) == 0
    assert not (cache_home / "fwc").exists()  # not even the key is made


def test_the_cache_directory_and_key_are_private(cache_home, tmp_path):
    assert compile_to(_policy(tmp_path), tmp_path / "out") == 0
    directory = cache_home / "fwc"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for entry in directory.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry
    assert (directory / "key").stat().st_size == fwc_cache.KEY_BYTES


def test_a_directory_others_can_use_is_not_used(cache_home, tmp_path, capsys):
    directory = cache_home / "fwc"
    directory.mkdir(mode=0o700)
    directory.chmod(0o755)
    policy = _policy(tmp_path)
    assert compile_to(policy, tmp_path / "out") == 0
    assert "not using the cache" in capsys.readouterr().err
    assert list(directory.iterdir()) == []  # nothing written, not even a key
    assert file_tree(tmp_path / "out") == _tree_of_plain(policy, tmp_path)


def _tree_of_plain(policy: Path, tmp_path: Path) -> dict[str, tuple[bytes, int]]:
    tmp_path.mkdir(exist_ok=True)
    assert compile_to(policy, tmp_path / "plain", "--no-cache") == 0
    return file_tree(tmp_path / "plain")


def test_a_directory_of_another_user_is_not_used(cache_home):
    if os.geteuid() != 0:
        cannot_run("needs root to give the directory to another user")
    directory = cache_home / "fwc"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(fwc_cache.CacheRefused, match="belongs to uid 65534"):
        fwc_cache.open_cache(os.environ)


def test_a_parent_others_can_write_is_not_used(cache_home, monkeypatch):
    shared = cache_home / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # someone else could swap the cache directory for their own
    monkeypatch.setenv("XDG_CACHE_HOME", str(shared))
    with pytest.raises(fwc_cache.CacheRefused, match="can be written by other users"):
        fwc_cache.open_cache(os.environ)
    assert not (shared / "fwc").exists()  # nothing created there


def test_never_in_the_shared_temporary_directory(tmp_path):
    with pytest.raises(fwc_cache.CacheRefused, match="shared temporary directory"):
        fwc_cache.open_cache({"XDG_CACHE_HOME": str(tmp_path)})
    assert not (tmp_path / "fwc").exists()
    # a relative XDG_CACHE_HOME does not count (XDG base directory specification)
    assert fwc_cache.cache_location({"XDG_CACHE_HOME": "rel", "HOME": "/home/u"}) == \
        Path("/home/u/.cache/fwc")


def test_a_corrupt_entry_is_ignored_and_replaced(cache_home, tmp_path):
    policy = _policy(tmp_path)
    assert compile_to(policy, tmp_path / "one") == 0
    [entry] = _entries(cache_home, "out")
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit inside the record of the files
    entry.write_bytes(bytes(data))
    assert compile_to(policy, tmp_path / "two") == 0
    assert file_tree(tmp_path / "two") == file_tree(tmp_path / "one")
    assert entry.read_bytes() != bytes(data)  # written anew by that compile


def test_a_foreign_entry_is_ignored(cache_home, tmp_path):
    """An entry authenticated with another key (another user's cache, a copied file)."""
    policy = _policy(tmp_path)
    assert compile_to(policy, tmp_path / "one") == 0
    [entry] = _entries(cache_home, "analysis")
    name = entry.name.split("-", 1)[1]
    # What another key would sign: diagnostics that say something else entirely.
    other = fwc_cache.ResultCache(cache_home / "fwc", b"k" * fwc_cache.KEY_BYTES)
    other.put_json("analysis", name, [["FWC999", "error", "planted", None, None, []]])
    mine = fwc_cache.open_cache(os.environ)
    assert mine.get_json("analysis", name) is None
    assert not entry.exists()  # removed, not interpreted
    assert main(["check", str(policy)]) == 0


def test_entries_are_data_and_bounded(cache_home, tmp_path):
    store = fwc_cache.open_cache(os.environ)
    name = "a" * 64
    store.put_json("analysis", name, {"x": [1, 2]})
    assert store.get_json("analysis", name) == {"x": [1, 2]}
    raw = (cache_home / "fwc" / f"analysis-{name}").read_bytes()
    assert raw.startswith(fwc_cache.MAGIC) and json.loads(raw[fwc_cache.HEADER:]) == \
        {"x": [1, 2]}
    with pytest.raises(ValueError):
        store.get_json("analysis", "../../etc/passwd")
    small = fwc_cache.ResultCache(store.directory, store._key, max_bytes=300)
    for i in range(5):
        small.put_json("analysis", f"{i:064x}", list(range(30)))
    left = _entries(cache_home, "analysis")
    assert sum(p.stat().st_size for p in left) <= 300
    assert (cache_home / "fwc" / f"analysis-{4:064x}") in left  # the newest stays
    for entry in left:
        entry.unlink()
    few = fwc_cache.ResultCache(store.directory, store._key, max_entries=3)
    for i in range(5, 11):
        few.put_json("analysis", f"{i:064x}", [i])
        os.utime(few.directory / f"analysis-{i:064x}", (1000 + i, 1000 + i))  # in order
    assert [p.name[-2:] for p in _entries(cache_home, "analysis")] == ["08", "09", "0a"]


def test_a_compile_after_check_of_the_same_content_does_not_check_again(cache_home, tmp_path,
                                                                        monkeypatch):
    import fwc.checks

    policy = _policy(tmp_path)
    assert main(["check", str(policy)]) == 0
    assert main(["check", str(policy)]) == 0  # answered without parsing

    def no_checks(*args, **kwargs):
        raise AssertionError("the checks ran again")

    monkeypatch.setattr(fwc.checks, "run_checks", no_checks)
    assert compile_to(policy, tmp_path / "out") == 0  # parse, resolve, build; checks cached
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    monkeypatch.delenv("FWC_NO_CACHE", raising=False)
    assert file_tree(tmp_path / "out") == _tree_of_plain(policy, tmp_path)


def test_a_policy_with_library_includes_is_answered_from_the_cache(cache_home, tmp_path,
                                                                    monkeypatch):
    import fwc.pipeline

    text = EDGE.read_text(encoding="utf-8")
    policy = _policy(tmp_path, "include <std/networks.fw>\n" + text)
    assert main(["check", str(policy)]) == 0

    def no_analysis(*args, **kwargs):
        raise AssertionError("the policy was parsed again")

    monkeypatch.setattr(fwc.pipeline, "load", no_analysis)
    assert main(["check", str(policy)]) == 0  # `<std/networks.fw>` is read from the library


def test_content_checked_before_but_not_last_is_found_without_parsing(cache_home, tmp_path,
                                                                      monkeypatch):
    """Back to an earlier text (an edit undone, a branch switched back): that run takes
    the diagnostics from the cache, and the next run of the same text must not parse."""
    import fwc.pipeline

    policy = _policy(tmp_path)
    text = policy.read_text(encoding="utf-8")
    assert main(["check", str(policy)]) == 0
    policy.write_text(text.replace("tcp/22", "tcp/2222", 1), encoding="utf-8")
    assert main(["check", str(policy)]) == 0
    policy.write_text(text, encoding="utf-8")
    assert main(["check", str(policy)]) == 0  # parsed: the last run read the other text

    def no_analysis(*args, **kwargs):
        raise AssertionError("the policy was parsed again")

    monkeypatch.setattr(fwc.pipeline, "load", no_analysis)
    assert main(["check", str(policy)]) == 0


def _with_include(tmp_path: Path) -> tuple[Path, Path]:
    """The edge policy with one object in an include next to it: (policy, include)."""
    text = EDGE.read_text(encoding="utf-8")
    policy = _policy(tmp_path, 'include "extra.fw"\n' + text)
    extra = policy.parent / "extra.fw"
    extra.write_text("host spare 198.51.100.77\n", encoding="utf-8")
    return policy, extra


def test_an_include_become_a_fifo_is_not_read_by_the_shortcut(cache_home, tmp_path):
    # The shortcut read it with a plain read: a FIFO blocked `fwc check` for ever.
    import subprocess
    import sys

    policy, extra = _with_include(tmp_path)
    assert main(["check", str(policy)]) == 0
    extra.unlink()
    os.mkfifo(extra)
    proc = subprocess.run([sys.executable, "-m", "fwc", "check", str(policy)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO),
                               "XDG_CACHE_HOME": str(cache_home)})
    assert proc.returncode == 1 and "FWC011" in proc.stderr, proc.stderr


def test_an_include_become_a_link_out_of_the_repository_is_refused_again(cache_home,
                                                                          tmp_path, capsys):
    # The same bytes, read through a link to a file outside the repository: the shortcut
    # answered "checked before" where a full run refuses the file (FWC010).
    policy, extra = _with_include(tmp_path)
    assert main(["check", str(policy)]) == 0
    outside = tmp_path / "outside.fw"
    outside.write_bytes(extra.read_bytes())
    extra.unlink()
    extra.symlink_to(outside)
    capsys.readouterr()
    assert main(["check", str(policy)]) == 1
    assert "FWC010" in capsys.readouterr().err


def _fwc(cache_home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A whole `fwc` process with the private cache CACHE_HOME."""
    return run_fwc(*args, cwd=cwd, env={"XDG_CACHE_HOME": str(cache_home)})


def test_an_include_link_retargeted_is_compiled_again(cache_home, tmp_path):
    """`services.fw -> services-v1.fw` retargeted to v2: the same policy text, the old
    target unchanged, yet another file is read. The shortcut checked only the files the
    last run read (by their resolved names) and answered from the cache: `fwc compile`
    wrote nothing and left the v1 rules installed-to-be, `fwc check` said v1's verdict."""
    text = EDGE.read_text(encoding="utf-8")
    assert "service ssh      tcp/22\n" in text
    policy = _policy(tmp_path, 'include "services.fw"\n'
                     + text.replace("service ssh      tcp/22\n", "", 1))
    work = policy.parent
    (work / "services-v1.fw").write_text("service ssh tcp/22\n", encoding="utf-8")
    (work / "services-v2.fw").write_text("service ssh tcp/2222\n", encoding="utf-8")
    (work / "services.fw").symlink_to("services-v1.fw")
    first = _fwc(cache_home, work, "compile", "edge.fw", "-o", "out")
    assert first.returncode == 0, first.stderr
    assert not any(b"2222" in data for data, _ in file_tree(work / "out").values())
    (work / "services.fw").unlink()
    (work / "services.fw").symlink_to("services-v2.fw")
    again = _fwc(cache_home, work, "compile", "edge.fw", "-o", "out")
    plain = _fwc(cache_home, work, "compile", "edge.fw", "-o", "plain", "--no-cache")
    assert (again.returncode, again.stderr) == (plain.returncode, plain.stderr)
    assert file_tree(work / "out") == file_tree(work / "plain")
    assert any(b"2222" in data for data, _ in file_tree(work / "out").values())


def test_links_that_read_the_same_files_another_way_are_another_key(cache_home, tmp_path):
    """Two include links to one file, then one of them turned into a link back to the
    policy: the same files with the same bytes are read (the cycle is not followed), but
    the second is an include cycle (FWC003). Keyed on the files alone, the full run found
    the first one's clean verdict in the cache and `fwc check` passed."""
    policy = _policy(tmp_path, 'include "a.fw"\ninclude "b.fw"\n'
                     + EDGE.read_text(encoding="utf-8"))
    work = policy.parent
    (work / "spare.fw").write_text("host spare 198.51.100.77\n", encoding="utf-8")
    (work / "a.fw").symlink_to("spare.fw")
    (work / "b.fw").symlink_to("spare.fw")
    assert _fwc(cache_home, work, "check", "edge.fw").returncode == 0
    (work / "b.fw").unlink()
    (work / "b.fw").symlink_to("edge.fw")
    plain = _fwc(cache_home, work, "check", "edge.fw", "--no-cache")
    assert plain.returncode == 1 and "FWC003" in plain.stderr, plain.stderr
    for _ in range(2):  # the full run, then the shortcut of what it stored
        cached = _fwc(cache_home, work, "check", "edge.fw")
        assert (cached.returncode, cached.stderr) == (plain.returncode, plain.stderr)


def test_an_include_become_a_link_loop_is_a_miss_not_a_traceback(cache_home, tmp_path):
    """Path.resolve raises RuntimeError on a link loop (Python < 3.13): the shortcut let
    it out, a traceback where a full run has to say what is wrong with the include."""
    from fwc.cache import open_cache
    from fwc.pipeline import cached_analysis

    policy, extra = _with_include(tmp_path)
    assert main(["check", str(policy)]) == 0
    assert cached_analysis(policy, (), open_cache()) is not None
    extra.unlink()
    extra.symlink_to(extra.name)
    assert cached_analysis(policy, (), open_cache()) is None


def test_a_local_edit_of_the_shipped_template_code_is_compiled_again(cache_home, tmp_path):
    """fwc/backend/render/templates.json is the code jinja2 generated from the templates,
    run as it is: the code digest left it out (it hashed .py, .j2, .lark, .fw, .toml),
    so a compile with an edited copy answered from the cache with the old files."""
    install = tmp_path / "install"
    shutil.copytree(REPO / "fwc", install / "fwc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "grammar", install / "grammar")
    policy = _policy(tmp_path)
    work = policy.parent

    def compile_with_copy(out: str, *extra: str) -> None:
        proc = subprocess.run([sys.executable, "-m", "fwc", "compile", "edge.fw", "-o", out,
                               *extra], cwd=work, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(install),
                                   "XDG_CACHE_HOME": str(cache_home)})
        assert proc.returncode == 0, proc.stderr

    compile_with_copy("out")
    code = install / "fwc" / "backend" / "render" / "templates.json"
    text = code.read_text(encoding="utf-8")
    assert text.count("Generated by fwc: edit the policy") > 1
    code.write_text(text.replace("Generated by fwc: edit the policy", "Edited by hand"),
                    encoding="utf-8")
    compile_with_copy("out")
    compile_with_copy("plain", "--no-cache")
    assert file_tree(work / "out") == file_tree(work / "plain")
    assert any(b"Edited by hand" in data for data, _ in file_tree(work / "out").values())


def _full_disk() -> None:
    """In the child: every write to a file fails (EFBIG, as ENOSPC would; Python ignores
    SIGXFSZ), creating files and directories still works."""
    import resource

    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def test_a_full_disk_means_no_cache_not_a_traceback_nor_a_broken_key(cache_home, tmp_path):
    """With nothing writable, `fwc check` crashed: `tempfile.gettempdir()` (asked only to
    keep the cache out of the temporary directory) probes by writing and raised; past
    that, the key was created empty in place and the write raised, and that empty key
    turned the cache off for good ("not 32 bytes long; remove it"). An entry whose write
    failed was left behind as a temporary file."""
    policy = _policy(tmp_path)
    work = policy.parent
    plain = run_fwc("check", "edge.fw", "--no-cache", cwd=work)
    full = run_fwc("check", "edge.fw", cwd=work, env={"XDG_CACHE_HOME": str(cache_home)},
                   preexec_fn=_full_disk)
    assert full.returncode == plain.returncode == 0, full.stderr
    assert full.stderr == "fwc: not using the cache: cannot create the cache key " \
        f"'{cache_home / 'fwc' / 'key'}': File too large\n" + plain.stderr
    assert list((cache_home / "fwc").iterdir()) == []
    # the disk has room again: the cache works, silently
    fine = _fwc(cache_home, work, "check", "edge.fw")
    assert (fine.returncode, fine.stderr) == (0, plain.stderr)
    assert len((cache_home / "fwc" / "key").read_bytes()) == 32
    # full again, the key there: entries that cannot be written leave nothing behind
    (work / "extra.fw").write_text("host spare 198.51.100.77\n", encoding="utf-8")
    policy.write_text('include "extra.fw"\n' + policy.read_text(encoding="utf-8"),
                      encoding="utf-8")
    before = sorted(p.name for p in (cache_home / "fwc").iterdir())
    full = run_fwc("check", "edge.fw", cwd=work, env={"XDG_CACHE_HOME": str(cache_home)},
                   preexec_fn=_full_disk)
    assert full.returncode == 0 and "Traceback" not in full.stderr, full.stderr
    assert sorted(p.name for p in (cache_home / "fwc").iterdir()) == before


def test_a_key_made_meanwhile_by_another_fwc_is_used_whole(cache_home, monkeypatch):
    """Two first runs at once: the key was created empty, then written; the second run
    read it empty in between and ran without the cache, saying "remove it"."""
    made: list[fwc_cache.ResultCache] = []
    real = fwc_cache.secrets.token_bytes
    calls = []

    def meanwhile(n: int) -> bytes:
        calls.append(n)
        if len(calls) == 1:  # the other fwc opens the cache while this one makes the key
            made.append(fwc_cache.open_cache())
        return real(n)

    monkeypatch.setattr(fwc_cache.secrets, "token_bytes", meanwhile)
    first = fwc_cache.open_cache()
    assert made[0]._key == first._key and len(first._key) == 32
    assert sorted(p.name for p in (cache_home / "fwc").iterdir()) == ["key"]


# A whole `fwc` process whose check FWC105 runs out of memory, as it did under a memory
# limit (RLIMIT_AS) on a 3,000-rule policy: run_check makes it an FWC900 diagnostic.
_OUT_OF_MEMORY = """
import dataclasses
import fwc.checks as checks
from fwc.cli import console

def out_of_memory(policy):
    raise MemoryError

registry = checks.load_registry()
registry["FWC105"] = dataclasses.replace(registry["FWC105"], function=out_of_memory)
console()
"""


def test_a_check_that_ran_out_of_memory_is_not_kept(cache_home, tmp_path):
    """A crash of a check (FWC900) is the machine's, not the content's: cached, every
    later `fwc check` and `fwc compile` of that content failed with it (until
    --no-cache), on a machine with all the memory it needs."""
    policy = _policy(tmp_path)
    work = policy.parent
    crashed = subprocess.run([sys.executable, "-c", _OUT_OF_MEMORY, "check", "edge.fw"],
                             cwd=work, capture_output=True, text=True, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(REPO),
                                  "XDG_CACHE_HOME": str(cache_home)})
    assert crashed.returncode == 1 and "FWC900" in crashed.stderr, crashed.stderr
    plain = run_fwc("check", "edge.fw", "--no-cache", cwd=work)
    assert plain.returncode == 0, plain.stderr
    for command in (("check", "edge.fw"), ("compile", "edge.fw", "-o", "out")):
        again = _fwc(cache_home, work, *command)
        assert again.returncode == 0 and "FWC900" not in again.stderr, again.stderr
