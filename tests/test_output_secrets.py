"""MANIFEST and secrets (issue 10): no password recoverable from the MANIFEST, edits
still caught, `--secrets` values checked like the policy's, sources compared exactly."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import EDGE_TEXT as EDGE

from fwc.backend.manifest import Manifest, ManifestError, redact
from fwc.cli import main
from fwc.diffing.installed import OTHER_SECRET, compare
from fwc.install.compiled import CompiledError, load_member_files
from fwc.install.secrets import SecretsError, fill, read_secrets
from fwc.install.transport import Result, Transport
from fwc.pipeline import analyse


def policy_of(path: Path):
    analysis = analyse(str(path))
    assert analysis.ok and analysis.policy is not None
    return analysis.policy


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_manifest_does_not_let_the_password_be_recovered(edge, tmp_path):
    """The attack: the redacted template with a guessed password, hashed, found in MANIFEST."""
    assert main(["compile", str(edge), "-o", str(tmp_path / "plain")]) == 0
    assert main(["compile", str(edge), "-o", str(tmp_path / "red"), "--redact-secrets"]) == 0
    manifest = (tmp_path / "plain" / "edge" / "MANIFEST").read_text()
    for member in ("fw1", "fw2"):
        template = (tmp_path / "red" / "edge" / member / "keepalived.conf").read_bytes()
        real = (tmp_path / "plain" / "edge" / member / "keepalived.conf").read_bytes()
        assert b'"s3cret"' in real and template.replace(b"@FWCPW@", b"s3cret") == real
        assert sha(real) not in manifest
        # what it lists instead is the hash of the redacted rendering
        assert f"redacted {sha(template)}  {member}/keepalived.conf" in manifest.splitlines()
        assert redact("keepalived.conf", real) == template


def test_manifest_round_trips_and_is_strict():
    built = Manifest.build("edge", "edge.fw", [("edge.fw", "a" * 64)],
                           [("fw1/keepalived.conf", b'auth_pass "pw"\n'),
                            ("fw1/iptables.rules", b"*filter\n")])
    assert Manifest.parse(built.render().decode()) == built
    assert [e.kind for e in built.files] == ["file", "redacted"]
    for broken in (built.render().decode().replace("source ", "sauce "),
                   built.render().decode().replace("cluster edge\n", ""),
                   "not a manifest\n"):
        with pytest.raises(ManifestError):
            Manifest.parse(broken)


def test_install_still_catches_a_changed_password_or_line_in_a_private_file(edge, tmp_path):
    out = tmp_path / "out"
    assert main(["compile", str(edge), "-o", str(out)]) == 0
    policy = policy_of(edge)
    assert "s3cret" in load_member_files(out, policy, "edge", "fw1")["keepalived.conf"]
    conf = out / "edge" / "fw1" / "keepalived.conf"
    original = conf.read_text()
    for edited in (original.replace('"s3cret"', '"0ther"'),
                   original.replace('"s3cret"', '"@FWCPW@"'),
                   original.replace("priority 150", "priority 151")):
        conf.write_text(edited)
        with pytest.raises(CompiledError) as raised:
            load_member_files(out, policy, "edge", "fw1")
        assert "s3cret" not in str(raised.value) and "0ther" not in str(raised.value)
    conf.write_text(original)
    # a password changed in the policy since the compile: the tree is stale
    edge.write_text(EDGE.replace('"s3cret"', '"n3w"'), encoding="utf-8")
    with pytest.raises(CompiledError, match="another version of the policy"):
        load_member_files(out, policy_of(edge), "edge", "fw1")


def test_auth_pass_in_a_track_script_is_no_secret(tmp_path):
    """Only keepalived's `auth_pass` lines hold the password. The word `auth_pass` inside
    a track script was taken for one: install refused the tree as compiled ("holds
    another secret than the policy"), and the MANIFEST did not cover the word after it,
    so two different scripts had one hash."""
    trees = []
    for program in ("/usr/local/sbin/ok", "/tmp/other"):
        directory = tmp_path / program.rsplit("/", 1)[1]
        directory.mkdir()
        policy = directory / "edge.fw"
        policy.write_text(EDGE.replace("cluster edge {\n", "cluster edge {\n    track { script "
                                       f'"/usr/local/sbin/check --auth_pass {program}" '
                                       "weight -60 }\n", 1), encoding="utf-8")
        assert main(["compile", str(policy), "-o", str(directory / "out")]) == 0
        files = load_member_files(directory / "out", policy_of(policy), "edge", "fw1")
        assert f"--auth_pass {program}" in files["keepalived.conf"]
        assert '"s3cret"' not in redact("fw1/keepalived.conf",
                                        files["keepalived.conf"].encode()).decode()
        trees.append((directory / "out" / "edge" / "MANIFEST").read_text())
    [first, second] = [[line for line in tree.splitlines() if "keepalived.conf" in line]
                       for tree in trees]
    assert first != second


def test_deleted_source_lines_do_not_hide_another_policy_version(edge, tmp_path):
    out = tmp_path / "out"
    assert main(["compile", str(edge), "-o", str(out)]) == 0
    edge.write_text(EDGE.replace("priority 100", "priority 90"), encoding="utf-8")
    manifest = out / "edge" / "MANIFEST"
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(True)
                                if not line.startswith("source ")))
    with pytest.raises(CompiledError, match="compiled from another version of the policy"):
        load_member_files(out, policy_of(edge), "edge", "fw1")


def test_a_file_line_deleted_from_manifest_is_refused(edge, tmp_path):
    out = tmp_path / "out"
    assert main(["compile", str(edge), "-o", str(out)]) == 0
    manifest = out / "edge" / "MANIFEST"
    manifest.write_text("".join(line for line in manifest.read_text().splitlines(True)
                                if not line.endswith("fw1/sysctl.conf\n")))
    with pytest.raises(CompiledError, match="sysctl.conf is not listed in MANIFEST"):
        load_member_files(out, policy_of(edge), "edge", "fw1")


@pytest.mark.parametrize(("value", "code"), [
    ("far-too-long", "FWC212"), ('wi"th', "FWC505"), ("tab\there", "FWC505"),
])
def test_secrets_file_values_pass_the_policy_checks(tmp_path, value, code):
    secrets = tmp_path / "secrets"
    secrets.write_text(f"# ok\nedge.vrrp_password = {value}\n", encoding="utf-8")
    with pytest.raises(SecretsError) as raised:
        read_secrets(secrets)
    message = str(raised.value)
    assert message.startswith(f"{secrets}:2:22: ") and code in message
    assert value not in message
    # the same rule when the value reaches fill() some other way
    with pytest.raises(SecretsError, match=code):
        fill("edge", "keepalived.conf", 'auth_pass "@FWCPW@"', {"vrrp_password": value})


def test_an_empty_secret_password_is_refused(tmp_path):
    # keepalived would run the instances without authentication (FWC213)
    secrets = tmp_path / "secrets"
    secrets.write_text('vrrp_password = ""\n', encoding="utf-8")
    with pytest.raises(SecretsError, match="FWC213"):
        read_secrets(secrets)
    with pytest.raises(SecretsError, match="FWC213"):
        fill("edge", "keepalived.conf", 'auth_pass "@FWCPW@"', {"vrrp_password": ""})


def test_a_good_secrets_file_is_accepted(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.write_text("vrrp_password = 8chars!!\n", encoding="utf-8")
    assert fill("edge", "keepalived.conf", 'auth_pass "@FWCPW@"',
                read_secrets(secrets)) == 'auth_pass "8chars!!"'


class FakeNode(Transport):
    """Answers `cat PATH` from a dict; everything else prints nothing."""

    def __init__(self, files: dict[str, str]) -> None:
        self.member = "fw1"
        self.files = files

    def run(self, command: str, *, input: str | None = None, timeout: float = 60.0) -> Result:
        if command.startswith("cat "):
            path = command.split()[1]
            return Result(0, self.files.get(path, "(fwc: absent)\n"), "")
        return Result(0, "", "")


def test_diff_installed_reports_another_password_without_showing_it():
    compiled = {"keepalived.conf": 'vrrp_instance VI {\n    auth_pass "s3cret"\n}\n'}
    node = FakeNode({"/etc/keepalived/keepalived.conf": compiled["keepalived.conf"]})
    assert not [t for t, _ in compare(node, compiled) if "keepalived" in t]
    node.files["/etc/keepalived/keepalived.conf"] = 'vrrp_instance VI {\n' \
        '    auth_pass "hunter2"\n}\n'
    drift = dict(compare(node, compiled))
    lines = drift["/etc/keepalived/keepalived.conf"]
    assert f'+    auth_pass "{OTHER_SECRET}"' in lines
    assert '-    auth_pass "(secret)"' in lines
    assert not any("s3cret" in line or "hunter2" in line for line in lines)


def test_a_secrets_file_that_is_not_utf8_is_an_error_that_shows_none_of_it(tmp_path):
    secrets = tmp_path / "secrets"
    secrets.write_bytes(b"vrrp_password = Pw\xff0rd\n")
    with pytest.raises(SecretsError) as raised:
        read_secrets(secrets)
    assert str(raised.value) == f"secrets file {secrets} is not UTF-8 text"
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_a_secrets_file_others_can_read_is_read_and_said(tmp_path, capsys):
    secrets = tmp_path / "secrets"
    secrets.write_text("vrrp_password = s3cret\n", encoding="utf-8")
    secrets.chmod(0o600)
    assert read_secrets(secrets) == {"vrrp_password": "s3cret"}
    assert capsys.readouterr().err == ""
    secrets.chmod(0o644)
    assert read_secrets(secrets) == {"vrrp_password": "s3cret"}
    assert capsys.readouterr().err == (f"fwc: warning: secrets file {secrets} is open to "
                                       f"other users (mode 0644): chmod 600 {secrets}\n")
