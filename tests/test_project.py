"""fwc.toml: project defaults found by walking up from the policy, flags override them,
a bad file is a diagnostic with file:line:col (FWC030-FWC034); VRRP secrets from an
environment variable or a command."""

from __future__ import annotations

import json
import os
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


def test_install_fills_redacted_secrets_from_the_configured_command(project):
    done = fwc("compile", "--redact-secrets", "policies/edge.fw", cwd=project)
    assert done.returncode == 0, done.stderr
    args = ("install", "--all", "--dry-run", "--format", "json", "--transport", "netns",
            "policies/edge.fw")
    refused = fwc(*args, cwd=project)
    assert refused.returncode == 2 and "redacted" in refused.stderr
    write_config(project, "secrets_command = \"printf 's3cret\\\\n'\"\n")
    done = fwc(*args, cwd=project)
    assert done.returncode == 0, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
    keepalived = [f for m in json.loads(done.stdout)["clusters"][0]["members"]
                  for f in m["files"] if f["name"] == "keepalived.conf"]
    assert keepalived and all(f["bytes"] > 0 for f in keepalived)
    by_env = fwc(*args[:-1], "--secrets-env", "FWC_PW", args[-1], cwd=project,
                 env={"FWC_PW": "s3cret"})
    assert by_env.returncode == 0, by_env.stderr
    assert os.environ.get("FWC_PW") is None
