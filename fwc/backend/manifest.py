"""DIR/<cluster>/MANIFEST: the one reader and writer (docs/contracts.md, "MANIFEST format").

The MANIFEST is world-readable and committed, while a file holding a VRRP
password is private (0600). A plain sha256 of such a file would let anyone who
knows the template (every other line of the file is public: the redacted
compile, the other member's file) recover an 8-character password offline.
So a file that holds secrets is listed as `redacted`: the sha256 of its text
with every secret replaced by the placeholder (`protocols.REDACTED_PASSWORD`),
which is exactly the `--redact-secrets` rendering. The secret itself is then
checked by whoever knows it (install compares it with the policy's), never
through the MANIFEST.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Collection, Iterable
from pathlib import Path

from fwc.backend.files import BY_NAME, can_hold_secret
from fwc.model.records import dataclass
from fwc.model.vocabulary import Backend
from fwc.protocols import REDACTED_PASSWORD

NAME = "MANIFEST"
HEADER = "# fwc MANIFEST: sha256 of every generated file and of the policy sources"
# Where a secret sits in the files that can carry one (fwc.backend.files.SECRET_FILES):
# keepalived's `auth_pass` keyword, which starts its line. Anchored there: a track
# script's text may hold the word too (`--auth_pass FILE`), and is no secret.
# A MANIFEST lists a cluster's files and sources: a few KB, under a MB at 100,000 rules.
MAX_BYTES = 16 * 1024 ** 2
_AUTH_PASS = re.compile(r'^([ \t]*auth_pass[ \t]+)("[^"\n]*"|[^\s"]+)', re.MULTILINE)
_SHA256 = re.compile(r"[0-9a-f]{64}")
FILE, REDACTED = "file", "redacted"


class ManifestError(Exception):
    """A MANIFEST that is missing or not in fwc's format; the message says where."""


def secret_values(name: str, text: str) -> list[str]:
    """The secrets written into compiled file NAME, in order (quotes removed)."""
    if not can_hold_secret(name):
        return []
    return [m.group(2).strip('"') for m in _AUTH_PASS.finditer(text)]


def mask_secrets(text: str, known: Collection[str] = (), *, placeholder: str = "(secret)",
                 other: str = "(secret)") -> str:
    """TEXT with every secret replaced: by PLACEHOLDER when it is one of KNOWN, else OTHER."""
    def replace(match: re.Match[str]) -> str:
        value = match.group(2).strip('"')
        return f'{match.group(1)}"{placeholder if value in known else other}"'
    return _AUTH_PASS.sub(replace, text)


def redact(name: str, content: bytes) -> bytes:
    """CONTENT as `fwc compile --redact-secrets` would have written it."""
    if not can_hold_secret(name):
        return content
    text = content.decode("utf-8", errors="surrogateescape")
    masked = mask_secrets(text, placeholder=REDACTED_PASSWORD, other=REDACTED_PASSWORD)
    return masked.encode("utf-8", errors="surrogateescape")


def holds_secret(name: str, content: bytes) -> bool:
    return redact(name, content) != content


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str  # FILE: sha256 of the bytes; REDACTED: sha256 of redact(bytes)
    sha256: str
    path: str  # relative to the cluster directory: <member>/<name>

    @classmethod
    def of(cls, path: str, content: bytes) -> Entry:
        """The entry of a compiled file: a secret-holding file gets a REDACTED one."""
        redacted = redact(path, content)
        return cls(REDACTED if redacted != content else FILE, _sha256(redacted), path)

    @classmethod
    def of_digest(cls, path: str, sha256: str) -> Entry:
        """The entry of a file hashed while it was written; never one that can carry a
        secret (its entry is of its redacted bytes: `of`)."""
        if can_hold_secret(path):
            raise ValueError(f"{path} can hold a secret: its entry needs its bytes")
        return cls(FILE, sha256, path)


def backend_problem(backend: Backend, paths: Iterable[str]) -> str | None:
    """Why the files PATHS (`<member>/<name>`) cannot be a tree compiled for BACKEND.

    Every listed file must be a row of the table of generated files for that
    backend (or for every backend): a MANIFEST that lists iptables.rules under
    `backend nftables` was not written by fwc.
    """
    for path in paths:
        row = BY_NAME.get(path.rpartition("/")[2])
        if row is not None and row.backend not in (None, backend):
            return f"lists {path}, a file of the {row.backend} backend, under 'backend {backend}'"
    return None


def _implied_backend(paths: Iterable[str]) -> str:
    """The backend of a MANIFEST written before it had a `backend` line: its rows say it."""
    rows = (BY_NAME.get(path.rpartition("/")[2]) for path in paths)
    found = sorted({str(row.backend) for row in rows if row is not None and row.backend})
    return found[0] if found else str(Backend.IPTABLES)


@dataclass(frozen=True, slots=True)
class Manifest:
    cluster: str
    policy: str  # the root policy file, relative to its own directory
    sources: tuple[tuple[str, str], ...]  # (path relative to the root's directory, sha256)
    files: tuple[Entry, ...]
    # The packet filter the files were written for (the cluster's `backend`, or
    # `fwc compile --backend`). A MANIFEST from before the line existed: its rows say.
    backend: Backend = Backend.IPTABLES

    @classmethod
    def build(cls, cluster: str, policy: str, sources: Iterable[tuple[str, str]],
              files: Iterable[tuple[str, bytes]],
              backend: Backend = Backend.IPTABLES) -> Manifest:
        """From the compiled (path, content) pairs: secret-holding files get REDACTED entries."""
        return cls.of_entries(cluster, policy, sources,
                              (Entry.of(path, content) for path, content in files), backend)

    @classmethod
    def of_entries(cls, cluster: str, policy: str, sources: Iterable[tuple[str, str]],
                   entries: Iterable[Entry], backend: Backend = Backend.IPTABLES) -> Manifest:
        """From entries made as each file was written (`Entry.of`), not from the files."""
        return cls(cluster, policy, tuple(sorted(sources)),
                   tuple(sorted(entries, key=lambda e: e.path)), backend)

    def render(self) -> bytes:
        """No timestamps, no absolute paths: the same policy gives the same bytes anywhere."""
        lines = [HEADER, f"cluster {self.cluster}", f"policy {self.policy}",
                 f"backend {self.backend}"]
        lines += [f"source {sha}  {path}" for path, sha in self.sources]
        lines += [f"{e.kind} {e.sha256}  {e.path}" for e in self.files]
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def parse(cls, text: str, where: str = NAME) -> Manifest:
        """Strict: a line fwc would not have written is an error, not something to skip."""
        lines = text.splitlines()
        if not lines or lines[0] != HEADER:
            raise ManifestError(f"{where}:1: not an fwc MANIFEST (the first line must be "
                                f"'{HEADER}')")
        single: dict[str, str] = {}
        sources: list[tuple[str, str]] = []
        files: list[Entry] = []
        for number, line in enumerate(lines[1:], 2):
            kind, _, rest = line.partition(" ")
            if kind in ("cluster", "policy", "backend") and rest and kind not in single:
                single[kind] = rest
                continue
            sha, sep, path = rest.partition("  ")
            if kind in ("source", FILE, REDACTED) and sep and path and _SHA256.fullmatch(sha):
                if kind == "source":
                    sources.append((path, sha))
                else:
                    files.append(Entry(kind, sha, path))
                continue
            raise ManifestError(f"{where}:{number}: unexpected line {line[:60]!r}: "
                                "run fwc compile again")
        for kind in ("cluster", "policy"):
            if kind not in single:
                raise ManifestError(f"{where}: no '{kind}' line: run fwc compile again")
        paths = [p for p, _ in sources] + [e.path for e in files]
        if len(paths) != len(set(paths)):
            raise ManifestError(f"{where}: a path is listed twice: run fwc compile again")
        word = single.get("backend") or _implied_backend(e.path for e in files)
        if word not in tuple(Backend):
            raise ManifestError(f"{where}: unknown backend {word[:30]!r}: run fwc compile again")
        backend = Backend(word)
        problem = backend_problem(backend, (e.path for e in files))
        if problem is not None:
            raise ManifestError(f"{where} {problem}: run fwc compile again")
        return cls(single["cluster"], single["policy"], tuple(sorted(sources)),
                   tuple(sorted(files, key=lambda e: e.path)), backend)

    @classmethod
    def read(cls, cluster_dir: Path) -> Manifest:
        path = cluster_dir / NAME
        try:
            text = _read_regular(path).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ManifestError(f"cannot read {path}: {reason}") from exc
        return cls.parse(text, str(path))

    def entry(self, path: str) -> Entry | None:
        return next((e for e in self.files if e.path == path), None)

    def mismatch(self, path: str, content: bytes, secret: str | None) -> str | None:
        """Why CONTENT is not the file listed as PATH (None: it is).

        SECRET is the value a REDACTED file must hold wherever it holds a secret
        (the policy's password); the message never contains a secret.
        """
        entry = self.entry(path)
        if entry is None:
            return "is not listed in MANIFEST"
        redacted = redact(path, content) if entry.kind == REDACTED else content
        if _sha256(redacted) != entry.sha256:
            return "does not match its MANIFEST (edited by hand?)"
        if entry.kind == REDACTED:
            values = secret_values(path, content.decode("utf-8", errors="replace"))
            if not values or secret is None or any(v != secret for v in values):
                return "holds another secret than the policy (edited by hand, or the " \
                       "password changed since it was compiled?)"
        return None


def _read_regular(path: Path) -> bytes:
    """PATH's bytes when it is a regular file of at most MAX_BYTES; OSError otherwise.

    Every compile into a directory reads the MANIFEST of each cluster there, and anyone
    who can write to the directory chooses what it is: a FIFO would block the compile
    (the open is non-blocking), a link to /dev/zero exhaust its memory, a link to
    another file be read (not followed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        data = os.read(fd, MAX_BYTES + 1)
        while len(data) <= MAX_BYTES:
            more = os.read(fd, MAX_BYTES + 1 - len(data))
            if not more:
                break
            data += more
        if len(data) > MAX_BYTES:
            raise OSError(0, f"larger than {MAX_BYTES} bytes")
        return data
    finally:
        os.close(fd)
