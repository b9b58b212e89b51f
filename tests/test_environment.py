"""Same policy, same bytes, whatever the environment (docs/compile.md): the reviewed
output/ must not change with the machine's locale, time zone, umask, hash seed or
number of processes, so each test compiles in a child process set up that way."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EDGE_TEXT, REPO, cannot_run, file_tree

LOCALE_SOURCES = Path("/usr/share/i18n/locales")


def built_locale(tmp_path: Path, source: str, charmap: str) -> dict[str, str]:
    """The environment of a locale built from glibc's SOURCE and CHARMAP under TMP_PATH
    (LOCPATH: nothing of the machine's locales changes)."""
    localedef = shutil.which("localedef")
    if localedef is None or not (LOCALE_SOURCES / source).is_file():
        cannot_run(f"localedef and glibc's locale sources ({LOCALE_SOURCES}/{source}) are "
                   "needed: apt-get install locales")
    name = f"{source}.{charmap}"
    where = tmp_path / "locales"
    where.mkdir(exist_ok=True)
    # (exit 1 with warnings only is usual for localedef; the check below decides)
    subprocess.run([localedef, "-i", source, "-f", charmap, str(where / name)],
                   capture_output=True, timeout=120)
    env = {"LOCPATH": str(where), "LC_ALL": name}
    done = subprocess.run([sys.executable, "-c", "import locale; print(locale.setlocale("
                           "locale.LC_ALL, ''))"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or done.stdout.strip() != name:
        cannot_run(f"localedef could not build {name}: {done.stderr.strip()}")
    return env


def compiled(policy: Path, out: Path, env: dict[str, str], *extra: str,
             umask: int = 0o022) -> dict[str, tuple[bytes, int]]:
    """`python -m fwc compile POLICY -o OUT EXTRA` from POLICY's directory, under ENV
    and UMASK: every file of OUT, its bytes and mode."""
    done = subprocess.run(
        [sys.executable, "-m", "fwc", "compile", policy.name, "-o", str(out), *extra],
        cwd=policy.parent, capture_output=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "FWC_NO_CACHE": "1", **env},
        preexec_fn=lambda: os.umask(umask))
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return file_tree(out)


def test_a_latin1_locale_reads_and_names_files_as_utf8(tmp_path):
    """Python names files in the locale's encoding. Under a Latin-1 locale `include
    "lib/hé.fw"` looked for another file than the policy names (FWC002), and a policy
    `büro.fw` became `bÃ¼ro.fw` in the MANIFEST and every rule comment: another policy
    to `fwc compile`, which then refused the cluster directory the same policy had
    written on a UTF-8 machine. fwc runs in Python's UTF-8 mode whatever the locale."""
    latin1 = built_locale(tmp_path, "en_US", "ISO-8859-1")
    repo = tmp_path / "repo"
    (repo / "lib").mkdir(parents=True)
    (repo / "lib" / "hé.fw").write_text("host heberg 192.0.2.30\n", encoding="utf-8")
    policy = repo / "büro.fw"
    policy.write_text('include "lib/hé.fw"\n' + EDGE_TEXT.replace(
        "    accept from client   to firewall service ssh\n",
        "    accept from client   to firewall service ssh\n"
        "    accept from heberg   to server   service web  log \"hé\"\n"), encoding="utf-8")
    utf8 = compiled(policy, tmp_path / "out", {"LC_ALL": "C.UTF-8"})
    assert "  büro.fw\n" in utf8["edge/MANIFEST"][0].decode("utf-8")
    assert '"büro.fw:' in utf8["edge/fw1/iptables.rules"][0].decode("utf-8")
    # the same tree: no file, name or byte differs, and the directory stays its own
    assert compiled(policy, tmp_path / "out", latin1) == utf8
    assert compiled(policy, tmp_path / "other", latin1) == utf8


EXAMPLES = sorted((REPO / "policies").glob("*.fw"))


@pytest.fixture(scope="module")
def turkish(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return built_locale(tmp_path_factory.mktemp("tr"), "tr_TR", "UTF-8")


@pytest.mark.parametrize("policy", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_gives_the_committed_bytes_in_another_environment(tmp_path, policy,
                                                                        turkish):
    """Another hash seed, time zone and umask, a Turkish locale (`I`.lower() is `ı`
    there for C programs) and the checks in a second process: output/ byte for byte,
    with the modes of a compile under umask 022 (the umask takes nothing from a file)."""
    env = {**turkish, "PYTHONHASHSEED": "4711", "TZ": "Pacific/Chatham"}
    got = compiled(policy, tmp_path / "out", env, "--jobs", "2", umask=0o077)
    plain = compiled(policy, tmp_path / "plain", {"LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0"},
                     "--jobs", "1")
    assert got == plain
    committed = {str(p.relative_to(REPO / "output")): p.read_bytes()
                 for p in sorted((REPO / "output").rglob("*")) if p.is_file()}
    assert {name: data for name, (data, _) in got.items()} == \
        {name: committed[name] for name in got}


def test_fmt_of_standard_input_writes_utf8_under_a_latin1_locale(tmp_path):
    """`fwc fmt -` reads UTF-8 and wrote the locale's encoding: under Latin-1 a policy
    with `log "é"` came back in other bytes, and one with `ı` (not in Latin-1) ended in
    a UnicodeEncodeError traceback."""
    latin1 = built_locale(tmp_path, "en_US", "ISO-8859-1")
    text = 'policy edge {\n    accept from a to b log "é ı"\n}\n'.encode()
    done = subprocess.run([sys.executable, "-m", "fwc", "fmt", "-"], input=text,
                          capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **latin1})
    assert (done.returncode, done.stdout) == (0, text), done.stderr.decode("utf-8", "replace")


def interpreter_modes(tmp_path: Path, argv: list[str], env: dict[str, str]) -> list[str]:
    """ARGV's exit 0, and the UTF-8 mode (0 or 1) of every interpreter it started, in
    order: a sitecustomize that each runs at start-up notes its own, so a restart shows."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    modes = tmp_path / "modes"
    modes.unlink(missing_ok=True)
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        f"with open({str(modes)!r}, 'a') as f:\n"
        "    f.write(f'{sys.flags.utf8_mode}\\n')\n", encoding="utf-8")
    done = subprocess.run(argv, capture_output=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", **env,
                               "PYTHONPATH": f"{hook}:{REPO}"})
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    return modes.read_text().split()


@pytest.mark.parametrize("entry", ["fwc", "fwc.lab"])
def test_every_entry_point_runs_in_utf8_mode_under_a_latin1_locale(tmp_path, entry):
    # `python -m fwc.lab` reads policies too: it must name their files as `fwc` does.
    # The first interpreter runs in the locale's mode, the restarted one in UTF-8's.
    latin1 = built_locale(tmp_path, "en_US", "ISO-8859-1")
    assert interpreter_modes(tmp_path, [sys.executable, "-m", entry, "--help"],
                             latin1) == ["0", "1"]


def test_the_locales_own_mode_asked_for_is_kept(tmp_path):
    # `-X utf8=0` and PYTHONUTF8=0 say: the locale's encoding, not UTF-8; fwc keeps that
    # (one interpreter, no restart), as Python itself does.
    latin1 = built_locale(tmp_path, "en_US", "ISO-8859-1")
    for argv, extra in (([sys.executable, "-X", "utf8=0", "-m", "fwc", "--help"], {}),
                        ([sys.executable, "-m", "fwc", "--help"], {"PYTHONUTF8": "0"})):
        assert interpreter_modes(tmp_path, argv, {**latin1, **extra}) == ["0"], (argv, extra)


def test_a_program_read_from_standard_input_is_not_started_again(tmp_path):
    # `python3 - ARGS` (or /dev/stdin) reads the program to the end of its standard input:
    # the restarted interpreter found it empty, ran nothing and exited 0, so a check of a
    # missing policy "passed" under a Latin-1 locale. Such a program runs on in the
    # locale's mode, and says what fwc says.
    latin1 = built_locale(tmp_path, "en_US", "ISO-8859-1")
    program = b"from fwc.__main__ import console\nconsole()\n"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **latin1}
    for script in ("-", "/dev/stdin"):
        done = subprocess.run([sys.executable, script, "check", str(tmp_path / "absent.fw")],
                              input=program, capture_output=True, timeout=60, env=env)
        assert done.returncode == 1, (script, done.returncode, done.stderr)
        assert b"error[FWC002]" in done.stderr, (script, done.stderr)
