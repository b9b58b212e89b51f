"""fwc.toml: project defaults found by walking up from the policy, flags override them,
a bad file is a diagnostic with file:line:col (FWC030-FWC034); the commands it names run
only once trusted (FWC037, `fwc trust`); VRRP secrets from an environment variable or a
command."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
from conftest import EDGE_TEXT as EDGE
from conftest import run_fwc

from fwc.frontend.project import find_config, load_config
from fwc.install.secrets import SecretsError, read_secret_source

# The checkout's fwc in a clean environment (PATH=/usr/bin:/bin and a test's ENV).
fwc = partial(run_fwc, clean_env=True, timeout=120)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "fw"
    (root / "policies").mkdir(parents=True)
    (root / ".git").mkdir()  # the repository root, as find_config sees it
    (root / "policies" / "edge.fw").write_text(EDGE, encoding="utf-8")
    return root


@pytest.fixture
def state_home() -> Iterator[Path]:
    """A private $XDG_STATE_HOME for the trust record (never under the shared temporary
    directory, which fwc refuses), removed afterwards."""
    home = Path.home() / ".local" / "state" / f"fwc-test-{uuid.uuid4().hex[:12]}"
    home.mkdir(mode=0o700, parents=True)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def write_config(root: Path, text: str) -> Path:
    path = root / "fwc.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)
    return path


def test_found_by_walking_up_and_flags_override(project):
    write_config(project, 'output = "build"\n')
    here = project / "policies"
    assert find_config(here / "edge.fw") == project / "fwc.toml"
    done = fwc("compile", "edge.fw", cwd=here)
    assert done.returncode == 0, done.stderr
    assert (project / "build" / "edge" / "MANIFEST").is_file()  # relative to fwc.toml
    assert not (here / "output").exists()
    done = fwc("compile", "edge.fw", "-o", "elsewhere", cwd=here)
    assert done.returncode == 0, done.stderr
    assert (here / "elsewhere" / "edge" / "MANIFEST").is_file()


def test_no_file_above_the_repository_root_is_read(project):
    (project.parent / "fwc.toml").write_text('output = "/nowhere"\nbogus = 1\n')
    assert find_config(project / "policies" / "edge.fw") is None
    done = fwc("compile", "policies/edge.fw", cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "output" / "edge").is_dir()  # the built-in default


def test_strict_from_the_file_and_no_strict_flag(project):
    write_config(project, "strict = true\n")
    policy = project / "policies" / "edge.fw"
    policy.write_text(EDGE + "\nhost unused_thing 192.0.2.99\n")  # FWC103, a warning
    assert fwc("check", "policies/edge.fw", cwd=project).returncode == 1
    assert fwc("check", "--no-strict", "policies/edge.fw", cwd=project).returncode == 0
    write_config(project, "strict = false\n")
    assert fwc("check", "policies/edge.fw", cwd=project).returncode == 0
    assert fwc("check", "--strict", "policies/edge.fw", cwd=project).returncode == 1


@pytest.mark.parametrize(("text", "code", "where", "words"), [
    ('output = "build"\noutptu = "x"\n', "FWC030", "fwc.toml:2:1", "did you mean 'output'"),
    ('  strict = "yes"\n', "FWC031", "fwc.toml:1:3", "must be true or false"),
    ('backend = "pf"\n', "FWC031", "fwc.toml:1:1", "one of iptables, nftables"),
    ('include_path = ["nope"]\n', "FWC031", "fwc.toml:1:1", "is not a directory"),
    # a project file comes with the repository: /etc/passwd's lines were printed as
    # the diagnostics of `include "/etc/passwd"` (helper review)
    ('include_path = ["/"]\n', "FWC031", "fwc.toml:1:1", "is outside the repository"),
    ('include_path = [".."]\n', "FWC031", "fwc.toml:1:1", "is outside the repository"),
    # nor write outside it: a pull request's output = "/home/ci/.config/x" made every
    # compile create that directory and write the members' files there
    ('output = "/var/tmp/fwc-elsewhere"\n', "FWC031", "fwc.toml:1:1",
     "is outside the repository"),
    ('output = "../compiled"\n', "FWC031", "fwc.toml:1:1", "is outside the repository"),
    ('output = "build\n', "FWC032", "fwc.toml:1:", "not valid TOML"),
    ('secrets_env = "A"\nsecrets_command = "pass x"\n', "FWC034", "fwc.toml:2:1",
     "2 ways"),
])
def test_bad_file_is_a_diagnostic_with_its_place(project, text, code, where, words):
    write_config(project, text)
    done = fwc("check", "policies/edge.fw", cwd=project)
    assert done.returncode == 2
    assert f"{where}" in done.stderr and f"error[{code}]" in done.stderr, done.stderr
    assert words in done.stderr
    assert "Traceback" not in done.stderr


def test_a_bad_file_in_the_format_asked_for(project):
    write_config(project, 'outptu = "x"\n')
    done = fwc("check", "--format", "github", "policies/edge.fw", cwd=project)
    assert done.returncode == 2
    assert done.stdout.startswith("::error file=fwc.toml,line=1,col=1,")
    assert "title=fwc FWC030::" in done.stdout


def test_a_file_others_may_write_is_refused(project):
    path = write_config(project, 'output = "build"\n')
    path.chmod(0o666)
    done = fwc("compile", "policies/edge.fw", cwd=project)
    assert done.returncode == 2 and "error[FWC033]" in done.stderr
    assert not (project / "build").exists() and not (project / "output").exists()


def test_a_good_file_is_silent(project):
    path = write_config(project, '# defaults\noutput = "build"\nstrict = false\n'
                        'backend = "iptables"\nssh = "ssh -i key"\ntransport = "ssh"\n'
                        'inventory = "hosts"\nsecrets_command = "pass show fwc"\n'
                        'include_path = ["policies"]\n')
    config, diagnostics = load_config(path)
    assert diagnostics == []
    assert config.get("output") == project / "build"
    assert config.get("include_path") == (project / "policies",)
    done = fwc("check", "policies/edge.fw", cwd=project)
    assert (done.returncode, done.stderr) == (0, "")


def test_only_the_commands_that_share_an_options_meaning_take_it():
    from fwc.cli import build_parser
    from fwc.commands.defaults import apply_project_defaults

    args = build_parser().parse_args(["query", "policies/edge.fw", "--from", "a", "--to", "b"])
    args.output = None  # as if a command had an -o of its own meaning (fwc graph FILE)
    assert apply_project_defaults(args) == [] and args.output is None
    args = build_parser().parse_args(["compile", "policies/edge.fw"])
    assert args.output == "output" and args.strict is False


def test_fmt_and_explain_ignore_the_file(project):
    write_config(project, "bogus = 1\n")
    formatted = fwc("fmt", "--check", "policies/edge.fw", cwd=project)
    assert formatted.returncode in (0, 1) and "FWC030" not in formatted.stderr
    assert fwc("explain", "FWC030", cwd=project).returncode == 0


# -- secrets from the environment or a command ----------------------------------------

def test_secret_sources(monkeypatch):
    monkeypatch.setenv("FWC_TEST_PW", "s3cret")
    assert read_secret_source(env="FWC_TEST_PW") == {"vrrp_password": "s3cret"}
    monkeypatch.setenv("FWC_TEST_PW", "edge.vrrp_password = abc123\nvrrp_password = x1y2z3")
    assert read_secret_source(env="FWC_TEST_PW") == {"edge.vrrp_password": "abc123",
                                                     "vrrp_password": "x1y2z3"}
    # `pass show` prints the password first and notes below it
    assert read_secret_source(command="printf 'hunter22\\nuser: admin\\n'") == {
        "vrrp_password": "hunter22"}
    with pytest.raises(SecretsError, match="exited with status 1") as failed:
        read_secret_source(command="sh -c 'echo $FWC_TEST_PW; exit 1'")
    assert "s3cret" not in str(failed.value)
    monkeypatch.setenv("FWC_TEST_PW", "waytoolongpw")  # keepalived uses 8 bytes: refused
    with pytest.raises(SecretsError) as bad:
        read_secret_source(env="FWC_TEST_PW")
    assert "waytoolongpw" not in str(bad.value)
    with pytest.raises(SecretsError, match="not set"):
        read_secret_source(env="FWC_TEST_UNSET_VARIABLE")
    with pytest.raises(SecretsError, match="one way"):
        read_secret_source(env="A", command="b")
    assert read_secret_source() is None


def test_install_fills_redacted_secrets_from_the_configured_command(project, state_home):
    done = fwc("compile", "--redact-secrets", "policies/edge.fw", cwd=project)
    assert done.returncode == 0, done.stderr
    args = ("install", "--all", "--dry-run", "--format", "json", "--transport", "netns",
            "policies/edge.fw")
    refused = fwc(*args, cwd=project)
    assert refused.returncode == 2 and "redacted" in refused.stderr
    write_config(project, "secrets_command = \"printf 's3cret\\\\n'\"\n")
    env = {"XDG_STATE_HOME": str(state_home)}
    assert fwc("trust", cwd=project, env=env).returncode == 0
    done = fwc(*args, cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    keepalived = [f for m in json.loads(done.stdout)["clusters"][0]["members"]
                  for f in m["files"] if f["name"] == "keepalived.conf"]
    assert keepalived and all(f["bytes"] > 0 for f in keepalived)
    by_env = fwc(*args[:-1], "--secrets-env", "FWC_PW", args[-1], cwd=project,
                 env={"FWC_PW": "s3cret"})
    assert by_env.returncode == 0, by_env.stderr
    assert os.environ.get("FWC_PW") is None


# -- the commands of fwc.toml run only once trusted (FWC037) ------------------------------

SECRETS_ARGS = ("install", "--all", "--dry-run", "--format", "json", "--transport", "netns",
                "policies/edge.fw")


def _secrets_command(marker: str) -> str:
    """fwc.toml naming a secrets command that leaves MARKER behind when it runs."""
    return f"secrets_command = \"sh -c 'touch {marker}; echo s3cret'\"\n"


def test_a_command_of_fwc_toml_runs_only_once_trusted(project, state_home):
    # A pull request may change fwc.toml: the commands it names (here the secrets
    # command, which `fwc install` runs on this machine) wait for `fwc trust`.
    env = {"XDG_STATE_HOME": str(state_home)}
    assert fwc("compile", "--redact-secrets", "policies/edge.fw", cwd=project).returncode == 0
    write_config(project, _secrets_command("ran"))
    refused = fwc(*SECRETS_ARGS, cwd=project, env=env)
    # (in the format asked for: JSON on standard output)
    assert refused.returncode == 2 and refused.stderr == ""
    problem, = json.loads(refused.stdout)["diagnostics"]
    assert (problem["code"], problem["file"], problem["line"]) == ("FWC037", "fwc.toml", 1)
    assert "fwc trust" in problem["hint"]
    text = fwc(*[a for a in SECRETS_ARGS if a not in ("--format", "json")], cwd=project,
               env=env)
    assert text.returncode == 2 and "fwc.toml:1:1: error[FWC037]" in text.stderr
    assert not (project / "ran").exists()
    trusted = fwc("trust", cwd=project, env=env)
    assert trusted.returncode == 0, trusted.stderr
    assert "trusted secrets_command = \"sh -c 'touch ran; echo s3cret'\"" in trusted.stdout
    done = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert done.returncode == 0, done.stderr
    assert (project / "ran").exists()
    # another command is another decision
    write_config(project, _secrets_command("ran-again"))
    again = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert again.returncode == 2 and '"FWC037"' in again.stdout
    assert not (project / "ran-again").exists()
    # a command given on the command line is the user's own
    flag = fwc(*SECRETS_ARGS[:-1], "--secrets-command", "echo s3cret", SECRETS_ARGS[-1],
               cwd=project, env=env)
    assert flag.returncode == 0, flag.stderr


def test_the_transport_and_ssh_of_fwc_toml_wait_for_trust_too(project, state_home):
    env = {"XDG_STATE_HOME": str(state_home)}
    write_config(project, 'ssh = "sh -c \'touch ran\' #"\ntransport = "local"\n')
    for args in (("status", "policies/edge.fw"),
                 ("diff", "--installed", "fw1", "policies/edge.fw")):
        done = fwc(*args, cwd=project, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert "fwc.toml:1:1: error[FWC037]: fwc.toml sets ssh" in done.stderr
        assert "fwc.toml:2:1: error[FWC037]: fwc.toml sets transport" in done.stderr
    assert not (project / "ran").exists()
    # the built-in values change nothing: no trust needed for them
    write_config(project, 'ssh = "ssh"\ntransport = "ssh"\n')
    done = fwc("status", "policies/edge.fw", cwd=project, env=env)
    assert "FWC037" not in done.stderr


def test_reading_and_compiling_never_ask_for_trust(project, state_home):
    # what a reviewer runs on a pull request runs none of fwc.toml's commands
    write_config(project, 'ssh = "sh -c \'touch ran\' #"\n' + _secrets_command("ran"))
    env = {"XDG_STATE_HOME": str(state_home)}
    for args in (("check", "policies/edge.fw"), ("compile", "policies/edge.fw"),
                 ("query", "policies/edge.fw", "--from", "192.0.2.10", "--to", "firewall")):
        done = fwc(*args, cwd=project, env=env)
        assert "FWC037" not in done.stderr, (args, done.stderr)
    assert not (project / "ran").exists()


def test_a_trust_record_others_can_change_is_not_taken(project, state_home):
    env = {"XDG_STATE_HOME": str(state_home)}
    assert fwc("compile", "--redact-secrets", "policies/edge.fw", cwd=project).returncode == 0
    write_config(project, _secrets_command("ran"))
    assert fwc("trust", cwd=project, env=env).returncode == 0
    record = state_home / "fwc" / "trust"
    record.chmod(0o770)
    refused = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert refused.returncode == 2 and '"FWC037"' in refused.stdout
    assert "group or other permissions" in refused.stdout
    record.chmod(0o700)
    # an entry written by anything but `fwc trust` (without the record's key) is no trust
    for entry in record.glob("trust-*"):
        entry.write_bytes(b"forged")
        entry.chmod(0o600)
    refused = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert refused.returncode == 2 and '"FWC037"' in refused.stdout
    assert not (project / "ran").exists()


def test_a_linked_fwc_toml_does_not_borrow_the_trust_of_its_target(project, state_home,
                                                                   tmp_path):
    # git checks out symbolic links: a pull request could make fwc.toml a link to a file
    # the user trusted for another repository, and its commands ran here without asking
    # (in this repository's directory: a trusted "./get-secret" would be this one's).
    env = {"XDG_STATE_HOME": str(state_home)}
    other = tmp_path / "other"
    (other / ".git").mkdir(parents=True)
    write_config(other, _secrets_command("ran"))
    assert fwc("trust", cwd=other, env=env).returncode == 0
    assert fwc("compile", "--redact-secrets", "policies/edge.fw", cwd=project).returncode == 0
    (project / "fwc.toml").symlink_to(other / "fwc.toml")
    refused = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert refused.returncode == 2 and '"FWC037"' in refused.stdout, refused.stdout
    assert not (project / "ran").exists()
    # trusted where it is found, it runs
    assert fwc("trust", cwd=project, env=env).returncode == 0
    done = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert done.returncode == 0, done.stdout
    assert (project / "ran").exists()


def test_a_file_of_the_repository_a_trusted_command_runs_is_trusted_as_it_was(project,
                                                                              state_home):
    # `secrets_command = "sh ./get-secret"` trusted once: a pull request that changes
    # get-secret, and not fwc.toml, ran its new content under the old trust
    env = {"XDG_STATE_HOME": str(state_home)}
    assert fwc("compile", "--redact-secrets", "policies/edge.fw", cwd=project).returncode == 0
    script = project / "get-secret"
    script.write_text("touch ran\necho s3cret\n", encoding="utf-8")
    write_config(project, 'secrets_command = "sh ./get-secret"\n')
    trusted = fwc("trust", cwd=project, env=env)
    assert trusted.returncode == 0 and "trusted the file 'get-secret'" in trusted.stdout
    assert fwc(*SECRETS_ARGS, cwd=project, env=env).returncode == 0
    assert (project / "ran").exists()
    script.write_text("touch changed\necho s3cret\n", encoding="utf-8")
    refused = fwc(*SECRETS_ARGS, cwd=project, env=env)
    assert refused.returncode == 2, refused.stdout
    problem, = json.loads(refused.stdout)["diagnostics"]
    assert problem["code"] == "FWC037" and "'get-secret'" in problem["message"]
    assert not (project / "changed").exists()
    # trusted again, as it is now, it runs
    assert fwc("trust", cwd=project, env=env).returncode == 0
    assert fwc(*SECRETS_ARGS, cwd=project, env=env).returncode == 0
    assert (project / "changed").exists()


def test_the_trust_record_lives_in_the_state_directory():
    from fwc.commands.trust import trust_location

    assert trust_location({"XDG_STATE_HOME": "/home/u/st"}) == Path("/home/u/st/fwc/trust")
    # a relative XDG_STATE_HOME does not count (XDG base directory specification)
    assert trust_location({"XDG_STATE_HOME": "rel", "HOME": "/home/u"}) == \
        Path("/home/u/.local/state/fwc/trust")
