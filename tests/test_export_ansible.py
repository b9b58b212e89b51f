"""`fwc export ansible`: the tree follows the files table, escapes every policy and
inventory value for YAML/Jinja, refuses what it cannot install, writes all or nothing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import EDGE, REPO, cannot_run, file_tree

from fwc.backend.files import BY_NAME
from fwc.cli import main
from fwc.install import scripts


def export(capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["export", "ansible", *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def inventory(tmp_path: Path, text: str) -> str:
    path = tmp_path / "inventory"
    path.write_text(text)
    return str(path)


def renamed(tmp_path: Path, cluster: str, members: tuple[str, str] = ("fw1", "fw2")) -> Path:
    text = EDGE.read_text().replace(" edge ", f" {cluster} ").replace(" edge {", f" {cluster} {{")
    text = text.replace("member fw1", f"member {members[0]}").replace(
        "member fw2", f"member {members[1]}").replace("only fw1", f"only {members[0]}")
    path = tmp_path / f"{cluster}.fw"
    path.write_text(text)
    return path


def test_a_member_without_ssh_host_or_inventory_line(tmp_path, capsys):
    code, out = export(capsys, str(EDGE), "-o", str(tmp_path / "t"))
    assert code == 1 and out.count("FWC552") == 2 and not (tmp_path / "t").exists()
    code, out = export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--redact-secrets",
                       "--inventory", inventory(tmp_path, "fw1 root@192.0.2.1\nfw2 192.0.2.2\n"))
    assert code == 0 and "FWC" not in out, out


def test_inventory_naming_no_member_or_unknown_option(tmp_path, capsys):
    code, out = export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--inventory",
                       inventory(tmp_path, "fw1 a\nfw2 b\nfw3 c\n"))
    assert code == 1 and "'fw3', which is no member" in out
    code, out = export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--inventory",
                       inventory(tmp_path, "fw1 a colour=red\nfw2 b\n"))
    assert code == 1 and "unknown option 'colour'" in out


def test_member_names_must_be_unique_across_the_fleet(tmp_path, capsys):
    other = renamed(tmp_path, "site2")
    code, out = export(capsys, str(EDGE), str(other), "-o", str(tmp_path / "t"),
                       "--inventory", inventory(tmp_path, "fw1 a\nfw2 b\n"))
    assert code == 1 and out.count("FWC551") == 2
    other = renamed(tmp_path, "site2", ("s2a", "s2b"))
    code, out = export(capsys, str(EDGE), str(other), "-o", str(tmp_path / "t"),
                       "--redact-secrets", "--inventory",
                       inventory(tmp_path, "fw1 a\nfw2 b\ns2a c\ns2b d\n"))
    assert code == 0, out


def test_clusters_that_give_one_group(tmp_path, capsys):
    a = renamed(tmp_path, "site-a", ("a1", "a2"))
    b = renamed(tmp_path, "site_a", ("b1", "b2"))
    code, out = export(capsys, str(a), str(b), "-o", str(tmp_path / "t"), "--inventory",
                       inventory(tmp_path, "a1 a\na2 b\nb1 c\nb2 d\n"))
    assert code == 1 and "FWC550" in out and "fwc_site_a" in out


def test_password_in_the_tree_is_warned_and_redaction_keeps_it_out(tmp_path, capsys):
    inv = inventory(tmp_path, "fw1 a\nfw2 b\n")
    code, out = export(capsys, str(EDGE), "-o", str(tmp_path / "plain"), "--inventory", inv)
    assert code == 0 and "FWC555" in out
    assert any(b"s3cret" in data for data, _ in file_tree(tmp_path / "plain").values())
    code, out = export(capsys, str(EDGE), "-o", str(tmp_path / "red"), "--inventory", inv,
                       "--redact-secrets")
    assert code == 0 and "FWC555" not in out
    files = file_tree(tmp_path / "red")
    assert not any(b"s3cret" in data for data, _ in files.values())
    assert files["roles/fwc/files/edge/fw1/keepalived.conf"][1] == 0o644
    assert "redacted: true" in files["host_vars/fw1.yml"][0].decode()


def test_the_stage_task_carrying_a_compiled_in_password_is_no_log(tmp_path, capsys):
    """Its stdin holds the files: without no_log, `ansible-playbook -vvv` prints the
    password (base64) in the task's invocation."""
    inv = inventory(tmp_path, "fw1 a\nfw2 b\n")
    code, _ = export(capsys, str(EDGE), "-o", str(tmp_path / "plain"), "--inventory", inv)
    assert code == 0
    files = file_tree(tmp_path / "plain")
    tasks = files["roles/fwc/tasks/main.yml"][0].decode()
    stage = tasks[tasks.index("- name: Stage the compiled files"):]
    stage = stage[:stage.index("- name:", 1)]
    assert "no_log: \"{{ fwc_files | selectattr('secret') | list | length > 0 }}\"" in stage
    host = files["host_vars/fw1.yml"][0].decode()
    conf = host[host.index("- name: !unsafe 'keepalived.conf'"):].split("\n  - name:")[0]
    assert "redacted: false" in conf and "secret: true" in conf
    assert "secret: true" not in host.replace(conf, "")


def test_the_tree_follows_the_files_table_and_install_steps(tmp_path, capsys):
    code, _ = export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--redact-secrets",
                     "--inventory", inventory(tmp_path, "fw1 a\nfw2 b\n"))
    assert code == 0
    files = file_tree(tmp_path / "t")
    host_vars = files["host_vars/fw1.yml"][0].decode()
    compiled = sorted(p.name for p in (REPO / "output/edge/fw1").iterdir())
    for name in compiled:
        row = BY_NAME[name]
        assert f"  - name: !unsafe '{name}'\n    path: !unsafe '{row.path}'\n" \
               f"    mode: '{row.mode:04o}'" in host_vars
        assert f"roles/fwc/files/edge/fw1/{name}" in files
    steps = {name.rsplit("/", 1)[1]: data.decode() for name, (data, _) in files.items()
             if name.startswith("roles/fwc/files/edge/fw1/steps/")}
    assert set(steps) >= {"preflight.sh", "lock.sh", "test.sh", "snapshot.sh", "apply.sh",
                          "rollback.sh", "confirm.sh", "reload-keepalived.sh"}
    from fwc.backend.files import FILES
    rows = [f for f in FILES if f.name in compiled]
    assert steps["test.sh"] == scripts.test_ruleset(rows) + "\n"
    assert steps["apply.sh"] == scripts.apply(rows) + "\n"
    # backups before the master, one member at a time
    inventory_text = files["inventory.yml"][0].decode()
    assert inventory_text.index("fw2:") < inventory_text.index("fw1:")
    site = files["site.yml"][0].decode()
    assert "serial: 1" in site and "max_fail_percentage: 0" in site


def test_same_policies_same_tree_and_foreign_directory_refused(tmp_path, capsys):
    inv = inventory(tmp_path, "fw1 a\nfw2 b\n")
    for out in ("one", "two"):
        assert export(capsys, str(EDGE), "-o", str(tmp_path / out), "--redact-secrets",
                      "--inventory", inv)[0] == 0
    assert file_tree(tmp_path / "one") == file_tree(tmp_path / "two")
    # exported again over itself: replaced whole
    assert export(capsys, str(EDGE), "-o", str(tmp_path / "one"), "--redact-secrets",
                  "--inventory", inv)[0] == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me\n")
    code, out = export(capsys, str(EDGE), "-o", str(foreign), "--inventory", inv)
    assert code == 1 and "FWC554" in out
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if ".fwc-" in p.name]


def test_inventory_values_never_become_template_expressions(tmp_path, capsys):
    if not shutil.which("ansible"):
        cannot_run("ansible-core is not installed (pip install '.[test]')")
    code, _ = export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--redact-secrets",
                     "--inventory", inventory(
                         tmp_path, "fw1 root@192.0.2.1 python={{lookup('pipe','id')}}\n"
                                   "fw2 192.0.2.2\n"))
    assert code == 0
    text = (tmp_path / "t/inventory.yml").read_text()
    assert "ansible_python_interpreter: !unsafe '{{lookup(''pipe'',''id'')}}'" in text
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "t/ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    run = subprocess.run(["ansible", "fw1", "-m", "ansible.builtin.debug", "-a",
                          "var=ansible_python_interpreter"], cwd=tmp_path / "t", env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "{{lookup('pipe','id')}}" in run.stdout and "uid=" not in run.stdout


def test_member_names_yaml_reads_as_booleans_stay_host_names(tmp_path, capsys):
    """Bare, `yes` and `on` are both the YAML 1.1 key True: Ansible refused the inventory
    ("Host pattern True must be a string")."""
    import yaml

    policy = renamed(tmp_path, "edge", ("yes", "on"))
    code, out = export(capsys, str(policy), "-o", str(tmp_path / "t"), "--redact-secrets",
                       "--inventory", inventory(tmp_path, "yes a\non b\n"))
    assert code == 0, out
    class Loader(yaml.SafeLoader):  # YAML 1.1, as Ansible reads it
        pass

    Loader.add_constructor("!unsafe", yaml.SafeLoader.construct_scalar)
    tree = yaml.load((tmp_path / "t/inventory.yml").read_text(), Loader=Loader)
    assert list(tree["all"]["children"]["fwc_edge"]["hosts"]) == ["on", "yes"]
    assert (tmp_path / "t/host_vars/yes.yml").is_file()


def test_values_yaml_would_type_stay_strings_in_ansible(tmp_path, capsys):
    """Ansible 2.19 reads `!unsafe 'on'` as True: the role's lookups then named the
    member's files `off/True/...`, and a user `no` logged in as `False`."""
    if not shutil.which("ansible-inventory"):
        cannot_run("ansible-core is not installed (pip install '.[test]')")
    policy = renamed(tmp_path, "off", ("yes", "on"))
    code, out = export(capsys, str(policy), "-o", str(tmp_path / "t"), "--redact-secrets",
                       "--inventory", inventory(tmp_path, "yes no@192.0.2.1\non null@1.5\n"))
    assert code == 0, out
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "t/ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path)}
    seen = {}
    for host in ("yes", "on"):
        run = subprocess.run(["ansible-inventory", "--host", host], cwd=tmp_path / "t",
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        variables = json.loads(run.stdout)
        seen[host] = [variables[k] for k in ("fwc_cluster", "fwc_member", "ansible_user",
                                             "ansible_host")]
    assert seen == {"yes": ["off", "yes", "no", "192.0.2.1"], "on": ["off", "on", "null", "1.5"]}


def test_ansible_lint_and_syntax_check_pass_on_the_tree(tmp_path, capsys):

    for tool in ("ansible-lint", "ansible-playbook"):
        if not shutil.which(tool):
            cannot_run(f"{tool} is not installed (pip install '.[test]')")
    assert export(capsys, str(EDGE), str(REPO / "policies/branch.fw"), "-o",
                  str(tmp_path / "t"), "--redact-secrets", "--inventory",
                  inventory(tmp_path, "fw1 root@192.0.2.1\nfw2 x netns=fwc-none\n"
                                      "bfw1 192.0.2.3 port=2222\nbfw2 192.0.2.4\n"))[0] == 0
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "t/ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "HOME": str(tmp_path)}
    syntax = subprocess.run(["ansible-playbook", "--syntax-check", "site.yml"],
                            cwd=tmp_path / "t", env=env, capture_output=True, text=True,
                            timeout=120)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr
    lint = subprocess.run(["ansible-lint", "--offline", "-q"], cwd=tmp_path / "t", env=env,
                          capture_output=True, text=True, timeout=300)
    assert lint.returncode == 0, lint.stdout + lint.stderr


# Passwords `fwc install --secrets` refuses, one per rule of fwc.model.passwords, and some
# it takes: the role's rule drifted (it counted characters and let `$`, a trailing
# backslash and a lone `}` through).
REFUSED = ["", "a$b", "${_PWD}", 'a"b', "ab\\", "a\\\\\\", "}", "ééééé", "123456789",
           "a\nb", "a\tb", "x\u202ey", "x\u2028y", "\x7f"]
ACCEPTED = ["s3cret", "12345678", "}}", "a}", "ab\\\\", "éééé", "a b", "#!%&'()*"]


def test_the_role_checks_the_password_with_fwcs_own_rule(tmp_path, capsys):
    """The tree's filter plugin is fwc.model.passwords, carried: it gives fwc's verdict and
    message for every password, where fwc cannot be imported (python -I -S)."""
    from fwc.model.passwords import describe_problems, password_problems

    assert export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--redact-secrets",
                  "--inventory", inventory(tmp_path, "fw1 a\nfw2 b\n"))[0] == 0
    plugin = tmp_path / "t/roles/fwc/filter_plugins/fwc_password.py"
    # Every character class unsafe_character knows, next to harmless text.
    corpus = REFUSED + ACCEPTED + [f"a{chr(c)}b" for c in
                                   (*range(0, 0x100), 0x061C, 0x200B, 0x200E, 0x2029, 0x2066,
                                    0xD800, 0xFEFF, 0x1F600)]
    script = ("import json, sys\nns = {}\nexec(open(sys.argv[1]).read(), ns)\n"
              "f = ns['FilterModule']().filters()['fwc_vrrp_password_problem']\n"
              "words = json.loads(sys.stdin.read())\n"
              "json.dump({'fwc': [m for m in sys.modules if m.split('.')[0] == 'fwc'],\n"
              "           'seen': [f(w) for w in words] + [f(12345678), f(True)]}, sys.stdout)\n")
    run = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(plugin)],
                         input=json.dumps(corpus), capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert answer["fwc"] == []  # fwc's rule, carried, not the controller's fwc
    *seen, number, boolean = answer["seen"]
    assert seen == [describe_problems(password_problems(w)) for w in corpus]
    assert all(seen[:len(REFUSED)]) and not any(seen[len(REFUSED):len(REFUSED) + len(ACCEPTED)])
    assert "a number in YAML" in number and "a boolean in YAML" in boolean


# Python 3.9's dataclass, as far as the carried rule meets it: no `slots` (3.10).
_PYTHON39_DATACLASSES = (
    "import dataclasses, sys, types\n"
    "real = dataclasses.dataclass\n"
    "def dataclass(cls=None, /, **options):\n"
    "    if 'slots' in options:\n"
    "        raise TypeError(\"dataclass() got an unexpected keyword argument 'slots'\")\n"
    "    return real(cls, **options)\n"
    "shim = types.ModuleType('dataclasses')\n"
    "shim.__dict__.update(vars(dataclasses), dataclass=dataclass)\n"
    "sys.modules['dataclasses'] = shim\n")


def test_the_password_filter_loads_on_the_oldest_controller_python_the_role_allows(
        tmp_path, capsys):
    """meta/main.yml asks for Ansible 2.15, whose controller may run Python 3.9: its
    dataclass has no `slots`, and a carried rule that asked for them did not load (every
    play using the filter failed). Run here against 3.9's dataclass."""
    from fwc.model.passwords import describe_problems, password_problems

    assert export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--redact-secrets",
                  "--inventory", inventory(tmp_path, "fw1 a\nfw2 b\n"))[0] == 0
    assert 'min_ansible_version: "2.15"' in (tmp_path / "t/roles/fwc/meta/main.yml").read_text()
    plugin = tmp_path / "t/roles/fwc/filter_plugins/fwc_password.py"
    script = (_PYTHON39_DATACLASSES + "import json\nns = {}\n"
              "exec(open(sys.argv[1]).read(), ns)\n"
              "f = ns['FilterModule']().filters()['fwc_vrrp_password_problem']\n"
              "json.dump([f(w) for w in json.loads(sys.stdin.read())], sys.stdout)\n")
    words = REFUSED + ACCEPTED
    run = subprocess.run([sys.executable, "-I", "-S", "-c", script, str(plugin)],
                         input=json.dumps(words), capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [describe_problems(password_problems(w)) for w in words]


def test_a_refused_or_missing_password_stops_the_playbook_before_any_node(tmp_path, capsys):
    """Checked in a first play for every member of every cluster, as fwc install checks
    its secrets first: nothing connects to a node (the members' hosts do not exist)."""
    from fwc.model.passwords import describe_problems, password_problems

    if not shutil.which("ansible-playbook"):
        cannot_run("ansible-core is not installed (pip install '.[test]')")
    assert export(capsys, str(EDGE), str(REPO / "policies/branch.fw"), "-o",
                  str(tmp_path / "t"), "--redact-secrets", "--inventory",
                  inventory(tmp_path, "fw1 root@192.0.2.1\nfw2 192.0.2.2\n"
                                      "bfw1 192.0.2.3\nbfw2 192.0.2.4\n"))[0] == 0
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "t/ansible.cfg"),
           "ANSIBLE_NOCOLOR": "1", "HOME": str(tmp_path), "ANSIBLE_TIMEOUT": "2"}
    for password in ("a$b", "ab\\", "}", "ééééé"):
        secrets = tmp_path / "secrets.json"
        secrets.write_text(json.dumps({"fwc_vrrp_passwords": {"edge": "s3cret",
                                                              "branch": password}}))
        run = subprocess.run(["ansible-playbook", "site.yml", "-e", f"@{secrets}"],
                             cwd=tmp_path / "t", env=env, capture_output=True, text=True,
                             timeout=120)
        output = run.stdout + run.stderr
        said = describe_problems(password_problems(password))
        assert run.returncode != 0 and said, output
        assert f"the VRRP password of cluster branch: {said}" in output, output
        if len(password) > 1:  # the message never shows the password
            assert password not in output, output
        # The first play stopped the playbook: edge's backup was never reached.
        assert "Copy the member's install steps" not in output, output
        assert "UNREACHABLE" not in output, output
    secrets.write_text(json.dumps({"fwc_vrrp_passwords": {"edge": "s3cret"},
                                   "fwc_vrrp_password": 12345678}))
    run = subprocess.run(["ansible-playbook", "site.yml", "-e", f"@{secrets}"],
                         cwd=tmp_path / "t", env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "a number in YAML" in run.stdout, run.stdout
    secrets.write_text(json.dumps({"fwc_vrrp_passwords": {"edge": "s3cret"}}))
    run = subprocess.run(["ansible-playbook", "site.yml", "-e", f"@{secrets}"],
                         cwd=tmp_path / "t", env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "the VRRP password of cluster branch: not set" \
        in run.stdout, run.stdout
    assert "Copy the member's install steps" not in run.stdout


def test_every_role_default_is_read_by_the_role(tmp_path, capsys):
    """defaults/main.yml offered fwc_confirm_timeout, which no task read: setting it to
    give a slow site more time changed nothing."""
    import yaml

    assert export(capsys, str(EDGE), "-o", str(tmp_path / "t"), "--redact-secrets",
                  "--inventory", inventory(tmp_path, "fw1 a\nfw2 b\n"))[0] == 0
    role = tmp_path / "t/roles/fwc"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    tasks = "".join(p.read_text() for p in sorted((role / "tasks").glob("*.yml")))
    assert defaults and all(re.search(rf"\b{name}\b", tasks) for name in defaults), defaults
