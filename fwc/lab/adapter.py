"""What the lab runs: a cluster of the checked model and its files, compiled in-process.

The policy goes through the normal pipeline (`fwc.pipeline.analyse`: load, parse,
resolve, check); the files come from the back end in this process
(`fwc.backend.output.stream_policy`, only the chosen cluster is built) or, with
`--compiled DIR`, from an `fwc compile` tree read and verified against its
MANIFEST and the policy exactly as `fwc install` reads it
(`fwc.install.compiled.load_member_files`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from fwc.backend.manifest import NAME as MANIFEST
from fwc.lab.filters import packet_filter
from fwc.lab.netns import LabError, LabRefused
from fwc.model import Cluster, Policy
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend

# member -> file name (a row of fwc.backend.files) -> its text
MemberFiles = Mapping[str, Mapping[str, str]]


# What the lab's members run in place of the commands a policy names (track scripts,
# notify actions): it succeeds, as a healthy check does, and runs nothing of the policy.
STAND_IN = "/bin/true"


@dataclass(frozen=True)
class LabSource:
    """One cluster of a checked policy and, per member, the files the lab installs."""

    policy: Policy
    cluster: Cluster
    files: MemberFiles
    origin: str  # where the files came from, for the progress and the report
    notes: tuple[str, ...] = ()  # what the report must say about the source (warnings)


def policy_commands(cluster: Cluster) -> list[str]:
    """The commands CLUSTER's policy names that keepalived or the notify script would run
    as root: `track { script }` and `notify { STATE "CMD" }` (fwc's own, such as the
    ping of `track { ping }`, are not among them)."""
    return ([f"track script {t.target!r}" for t in cluster.tracks if t.kind == "script"]
            + [f"notify {a.state} {a.command!r}" for a in cluster.notify_actions])


def with_stand_ins(policy: Policy, cluster: Cluster) -> tuple[Policy, Cluster]:
    """POLICY with CLUSTER's track scripts and notify actions replaced by STAND_IN."""
    tracks = tuple(replace(t, target=STAND_IN) if t.kind == "script" else t
                   for t in cluster.tracks)
    actions = tuple(replace(a, command=STAND_IN) for a in cluster.notify_actions)
    variant = replace(cluster, tracks=tracks, notify_actions=actions)
    return with_cluster(policy, variant), variant


def with_cluster(policy: Policy, variant: Cluster) -> Policy:
    """POLICY with VARIANT in place of its cluster of that name."""
    return replace(policy, clusters=tuple(variant if c.name == variant.name else c
                                          for c in policy.clusters))


def load_source(
    policy_file: Path,
    compiled: Path | None = None,
    cluster_name: str | None = None,
    include_path: Sequence[Path] = (),
    backend: Backend | None = None,
    run_policy_commands: bool = False,
) -> LabSource:
    """Analyse POLICY_FILE, pick one cluster and get its files (compiled here unless
    COMPILED names an `fwc compile` output directory).

    The commands the policy names (`policy_commands`) run as root on the machine that
    runs the lab, whose file system the members share, and a policy under review comes
    from someone else: they run only with RUN_POLICY_COMMANDS. Otherwise the cluster is
    compiled with STAND_IN in their place (and the report says so), and a COMPILED tree,
    which holds them as written, is refused.

    BACKEND (`fwc lab --backend`) overrides the cluster's `backend` as `fwc compile
    --backend` does: the model's cluster with that backend, checked and compiled.
    A COMPILED tree brings its own (its MANIFEST's `backend` line), and the lab
    drills what the tree holds."""
    from fwc.diagnostics import render_text
    from fwc.pipeline import analyse

    analysis = analyse(policy_file, include_path=include_path)
    if not analysis.ok or analysis.policy is None:
        errors = [d for d in analysis.diagnostics if d.is_error]
        text = render_text(errors, analysis.program.texts).strip()
        raise LabRefused(f"{policy_file} does not check cleanly, nothing was started:\n{text}")
    policy = analysis.policy
    if not policy.clusters:
        raise LabRefused(f"{policy_file} defines no cluster")
    cluster = policy.cluster(cluster_name) if cluster_name else policy.clusters[0]
    if cluster is None:
        raise LabRefused(f"no cluster {cluster_name!r} in {policy_file}")
    if compiled is not None:
        tree = compiled_backend(compiled, cluster)
        if backend is not None and backend is not tree:
            raise LabRefused(f"{compiled / cluster.name} was compiled for `backend {tree}`, "
                             f"not {backend}: drop --backend, or compile with "
                             f"`fwc compile --backend {backend}`; nothing was started")
        backend = tree
    if backend is not None and backend is not cluster.backend:
        policy, cluster = backend_variant(policy, cluster, backend)
    # The files reach a member through fwc install, whatever its backend; three drill
    # steps act on the packet filter themselves, and fwc.lab.filters says how per backend.
    if packet_filter(cluster.backend) is None:
        raise LabRefused(f"cluster '{cluster.name}' uses `backend {cluster.backend}`: the "
                         "lab's drills cannot wipe, watch or change that packet filter, so "
                         "nothing was started")
    commands = [] if run_policy_commands else policy_commands(cluster)
    if commands and compiled is not None:
        raise LabRefused(f"{compiled / cluster.name} holds commands the policy names "
                         f"({'; '.join(commands)}), which the members would run as root on "
                         "this machine: run the lab without --compiled (it stands in for "
                         "them), or give --run-policy-commands; nothing was started")
    if compiled is None:
        notes: tuple[str, ...] = ()
        if commands:
            policy, cluster = with_stand_ins(policy, cluster)
            notes = (f"not run in the lab: {'; '.join(commands)} ({STAND_IN} stood in "
                     "for each: --run-policy-commands runs them, as root on this "
                     "machine)",)
        return LabSource(policy, cluster, compile_cluster(policy, cluster), "compiled in-process",
                         notes)
    return LabSource(policy, cluster, read_compiled(compiled, policy, cluster),
                     f"{compiled / cluster.name} (MANIFEST verified)")


def compiled_backend(output: Path, cluster: Cluster) -> Backend:
    """The backend an `fwc compile` tree holds CLUSTER's files for (its MANIFEST says)."""
    from fwc.install.compiled import CompiledError, read_manifest

    try:
        return read_manifest(output / cluster.name).backend
    except CompiledError as exc:
        raise LabRefused(f"{exc} (or run the lab without --compiled: it compiles in-process)") \
            from exc


def backend_variant(policy: Policy, cluster: Cluster, backend: Backend) -> tuple[Policy, Cluster]:
    """POLICY with CLUSTER compiled for BACKEND, checked by every check of `fwc check`.

    A policy the backend cannot express (FWC429 and the other capability checks)
    is refused with the checks' own words before anything starts.
    """
    from fwc.checks import run_checks

    variant = replace(cluster, backend=backend)
    varied = with_cluster(policy, variant)
    errors = [d for d in run_checks(varied) if d.is_error]
    if errors:
        why = "; ".join(f"{d.code} {d.message}" for d in errors)
        raise LabRefused(f"cluster '{cluster.name}' cannot be compiled for `backend {backend}`: "
                         f"{why}; nothing was started")
    return varied, variant


def compile_cluster(policy: Policy, cluster: Cluster) -> dict[str, dict[str, str]]:
    """CLUSTER's files per member, built by the back end in this process (nothing written)."""
    from fwc.backend.output import OutputError, stream_policy

    (stream,) = [s for s in stream_policy(policy) if s.name == cluster.name]
    files: dict[str, dict[str, str]] = {m.name: {} for m in cluster.members}
    try:
        for f in stream.files():
            member, _, name = f.path.partition("/")
            if f.path != MANIFEST:
                files[member][name] = f.content.decode("utf-8")
    except OutputError as exc:
        raise LabError(f"compiling cluster {cluster.name} failed: {exc}") from exc
    return files


def read_compiled(output: Path, policy: Policy, cluster: Cluster) -> dict[str, dict[str, str]]:
    """CLUSTER's files from an `fwc compile` tree, verified as `fwc install` verifies them."""
    from fwc.install.compiled import CompiledError, load_member_files
    from fwc.install.secrets import SecretsError, fill

    files: dict[str, dict[str, str]] = {}
    try:
        for member in cluster.members:
            loaded = load_member_files(output, policy, cluster.name, member.name)
            files[member.name] = {name: fill(cluster.name, name, text, None)
                                  for name, text in loaded.items()}
    except (CompiledError, SecretsError) as exc:
        raise LabRefused(f"{exc} (or run the lab without --compiled: it compiles in-process)") \
            from exc
    return files


def advert_label(seconds: float) -> str:
    """0.1 -> "100ms", 1.0 -> "1s": how the lab names an advert interval."""
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def advert_variant(source: LabSource, advert_s: float) -> LabSource:
    """SOURCE's cluster with `vrrp { advert ADVERT_S version 3 }`, checked and compiled.

    The model's own VRRP settings with a different interval and version (the
    policy's password, auth and every other setting kept), checked by every check
    of `fwc check` and compiled by the back end in this process, as if the policy
    said so. A profile the policy cannot take (VRRPv3 has no authentication, so a
    policy with a password cannot; an interval VRRPv3 does not allow) is refused
    with the checks' own words, before anything starts.
    """
    from fwc.checks import run_checks

    policy, cluster = source.policy, source.cluster
    label = advert_label(advert_s)
    vrrp = replace(cluster.vrrp, advert_ms=round(advert_s * 1000), version=3)
    variant = replace(cluster, vrrp=vrrp)
    varied = with_cluster(policy, variant)
    errors = [d for d in run_checks(varied) if d.is_error]
    if errors:
        # The checks' hints speak to the policy's author ("use version 2"), not to a
        # profile that is version 3 by definition: the code and message say it.
        why = "; ".join(f"{d.code} {d.message}" for d in errors)
        raise LabRefused(
            f"advert profile {label} cannot run on cluster '{cluster.name}': with "
            f"`vrrp {{ advert {label} version 3 }}` its policy does not check: {why}. "
            "Drop that profile from --adverts, or run a variant of the policy that checks "
            f"with `version 3` (e.g. without a password); nothing was started")
    return LabSource(varied, variant, compile_cluster(varied, variant),
                     f"VRRPv3 advert {label} variant of the model, compiled in-process")
