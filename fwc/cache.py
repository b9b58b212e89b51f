"""A user-private cache of results keyed on content hashes (`fwc check`, `fwc compile`).

Where: `$XDG_CACHE_HOME/fwc`, else `~/.cache/fwc`; never the shared temporary
directory. The directory must be the user's own (owner = effective uid, not a
symbolic link, no group or other permission bits, in a parent only the user or
root can write): a directory another user could write to, replace, or read, is
not used at all (`open_cache` says why and the command
runs without a cache). It holds a per-user key (`key`, 32 random bytes, mode
0600) and one file per entry, mode 0600.

Every entry is authenticated: `MAGIC`, the HMAC-SHA256 (with that key) of the
entry's kind, name and payload, then the payload. An entry whose HMAC does not
verify (corrupt, truncated, written by another program or copied from another
user's cache) is ignored and removed, never interpreted. Payloads are data only,
JSON; nothing is ever unpickled (`fwc compile` records the digests of the files it
wrote, never their bytes: fwc.backend.record). What an entry keeps of a secret (a
password file, a file holding the password) is keyed with the same key
(`secret_hash`), never a plain sha256 that an offline search would undo.

What a key means is the caller's business (fwc.pipeline: the content hashes of
every file a policy read, the fwc code, the working directory); this module
stores and authenticates. The cache is bounded (`MAX_BYTES`, `MAX_ENTRIES`): after each write
the least recently used entries go.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

MAGIC = b"fwc-cache 1\n"
HEADER = len(MAGIC) + 64 + 1  # magic, hex HMAC, newline
KEY_FILE = "key"
KEY_BYTES = 32
# The whole cache; least recently used entries go first. Entries are JSON: a few KB (a
# compile's record) to a few MB (the diagnostics of a large policy with many findings).
MAX_BYTES = 256 * 1024 ** 2
MAX_ENTRIES = 2_000  # every write lists the directory (prune): it stays short
CHUNK = 1 << 20


class CacheRefused(Exception):  # noqa: N818 - a reason, shown to the user
    """The cache directory cannot be trusted or created; the message says why."""


def cache_location(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CACHE_HOME/fwc (only an absolute XDG_CACHE_HOME counts), else ~/.cache/fwc."""
    base = environ.get("XDG_CACHE_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / "fwc"
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / ".cache" / "fwc"


def _shared_temp_dirs() -> list[str]:
    """Where temporary files go: what tempfile would choose first (TMPDIR, TEMP, TMP)
    and the system's. Named, never probed: `tempfile.gettempdir()` writes a test file in
    each, and on a full disk raised "no usable temporary directory" (a traceback from
    `fwc check`, which writes no temporary file)."""
    named = [os.environ.get(name, "") for name in ("TMPDIR", "TEMP", "TMP")]
    return sorted({os.path.realpath(d) for d in
                   [*filter(None, named), "/tmp", "/var/tmp", "/usr/tmp", "/dev/shm"]})


def _private(info: os.stat_result, what: str, path: Path) -> None:
    if info.st_uid != os.geteuid():
        raise CacheRefused(f"{what} '{path}' belongs to uid {info.st_uid}, not to you")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise CacheRefused(f"{what} '{path}' has group or other permissions "
                           f"({stat.S_IMODE(info.st_mode):04o}); it must be 0700 (0600 for "
                           "files)")


class ResultCache:
    """The opened cache directory and its key (`open_cache`)."""

    def __init__(self, directory: Path, key: bytes, max_bytes: int = MAX_BYTES,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.directory = directory
        self._key = key
        self.max_bytes = max_bytes
        self.max_entries = max_entries

    # -- naming and authentication ----------------------------------------------------
    def _path(self, kind: str, name: str) -> Path:
        if not (kind.isalnum() and len(name) == 64 and all(c in "0123456789abcdef"
                                                             for c in name)):
            raise ValueError(f"bad cache entry name {kind}-{name}")
        return self.directory / f"{kind}-{name}"

    def _mac(self, kind: str, name: str) -> Any:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(f"{kind}\0{name}\0".encode())
        return mac

    def secret_hash(self) -> Any:
        """A running HMAC-SHA256 with this cache's key, `update`d and `hexdigest`ed like
        hashlib's: what an entry keeps of a secret (a password file, a keepalived.conf
        holding the password). A plain sha256 of an 8-character password, or of a file
        whose every other line is public, is undone by an offline search; this one needs
        the key too. (The leading NUL keeps it apart from every entry's MAC: kinds are
        alphanumeric.)"""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        mac.update(b"\0secret\0")
        return mac

    def _open_entry(self, path: Path) -> IO[bytes] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        stream = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() \
                or stat.S_IMODE(info.st_mode) & 0o077:
            stream.close()
            return None
        return stream

    def _verified(self, stream: IO[bytes], kind: str, name: str) -> bool:
        """Whether the open entry's HMAC matches its content (read through once)."""
        head = stream.read(HEADER)
        if len(head) != HEADER or not head.startswith(MAGIC) or head[-1:] != b"\n":
            return False
        mac = self._mac(kind, name)
        while chunk := stream.read(CHUNK):
            mac.update(chunk)
        return hmac.compare_digest(mac.hexdigest().encode(), head[len(MAGIC):-1])

    def _discard(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            path.unlink()

    def _touch(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first

    # -- JSON entries -----------------------------------------------------------------
    def get_json(self, kind: str, name: str) -> Any | None:
        """The entry's value; None when missing, corrupt or foreign (then it is removed)."""
        path = self._path(kind, name)
        stream = self._open_entry(path)
        if stream is None:
            return None
        with stream:
            if not self._verified(stream, kind, name):
                self._discard(path)
                return None
            stream.seek(HEADER)
            payload = stream.read()
        try:
            value = json.loads(payload)
        except ValueError:
            self._discard(path)
            return None
        self._touch(path)
        return value

    def put_json(self, kind: str, name: str, value: Any) -> None:
        payload = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
        with _EntryWriter(self, kind, name) as writer:
            writer.write(payload)
            writer.commit()

    # -- size ---------------------------------------------------------------------------
    def prune(self) -> None:
        """Remove least recently used entries until the cache is under max_bytes and
        max_entries."""
        entries = []
        total = 0
        try:
            listing = list(os.scandir(self.directory))
        except OSError:
            return
        for entry in listing:
            try:
                if entry.name == KEY_FILE or not entry.is_file(follow_symlinks=False):
                    continue
                info = entry.stat(follow_symlinks=False)
            except OSError:  # gone: another fwc pruned it
                continue
            if entry.name.startswith("tmp-") and info.st_mtime > time.time() - 3600:
                continue  # another fwc may be writing it
            entries.append((info.st_mtime, entry.name, info.st_size))
            total += info.st_size
        count = len(entries)
        for _, name, size in sorted(entries):
            if total <= self.max_bytes and count <= self.max_entries \
                    and not name.startswith("tmp-"):
                break
            self._discard(self.directory / name)
            total -= size
            count -= 1


class _EntryWriter:
    """Writes one entry: `write` its payload, then `commit` (or nothing, on error).

    The file is written under a temporary name and renamed when complete, so a
    reader never sees half an entry; the HMAC is computed while writing.
    """

    def __init__(self, cache: ResultCache, kind: str, name: str) -> None:
        self._cache = cache
        self._final = cache._path(kind, name)
        self._mac = cache._mac(kind, name)
        self._done = False
        self._tmp = cache.directory / f"tmp-{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        self._stream = os.fdopen(fd, "wb")
        self._stream.write(MAGIC + b"0" * 64 + b"\n")

    def write(self, data: bytes) -> None:
        self._stream.write(data)
        self._mac.update(data)

    def commit(self) -> None:
        """Finish the entry and make it visible."""
        self._stream.seek(len(MAGIC))
        self._stream.write(self._mac.hexdigest().encode())
        self._stream.close()
        os.replace(self._tmp, self._final)
        self._done = True
        self._cache.prune()

    def __enter__(self) -> _EntryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:  # an error, or never committed: nothing becomes visible
            with contextlib.suppress(OSError):  # the flush of a full disk fails again
                self._stream.close()
            with contextlib.suppress(OSError):
                self._tmp.unlink()


def _new_key(directory: Path, path: Path) -> None:
    """Make the key PATH, whole or not at all: written under a temporary name, then
    linked to its name (which fails when another fwc made it first: that one stays).
    Created in place (O_EXCL, then written), a full disk left an empty key and a
    traceback, every later run "not 32 bytes long; remove it", and a second fwc
    started meanwhile read it empty and said so too."""
    tmp = directory / f"tmp-key-{os.getpid()}-{secrets.token_hex(8)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(secrets.token_bytes(KEY_BYTES))
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as exc:
        raise CacheRefused(f"cannot create the cache key '{path}': {exc.strerror or exc}") \
            from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_key(directory: Path) -> bytes:
    path = directory / KEY_FILE
    if not os.path.lexists(path):
        _new_key(directory, path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CacheRefused(f"cannot read the cache key '{path}': {exc.strerror or exc}") \
            from exc
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise CacheRefused(f"cache key '{path}' is not a regular file")
        _private(info, "cache key", path)
        key = stream.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise CacheRefused(f"cache key '{path}' is not {KEY_BYTES} bytes long; remove it")
    return key


def open_cache(environ: Mapping[str, str] = os.environ,
               location: Path | None = None, what: str = "cache",
               variable: str = "XDG_CACHE_HOME") -> ResultCache:
    """The user's cache, created 0700 if missing; CacheRefused when it cannot be trusted.

    LOCATION, WHAT, VARIABLE: another private store of authenticated entries (the
    trust record of fwc.commands.trust, under $XDG_STATE_HOME), named so in messages."""
    directory = Path(os.path.abspath(location or cache_location(environ)))
    real = os.path.realpath(directory)
    for shared in _shared_temp_dirs():
        if real == shared or real.startswith(shared.rstrip("/") + "/"):
            raise CacheRefused(f"'{directory}' is in the shared temporary directory "
                               f"{shared}: the {what} is never kept there (set "
                               f"{variable} to a directory of your own)")
    try:
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Whoever may write the parent could replace the directory by one of their own
        # (a symbolic link to it) between two runs: the parent is the user's or root's.
        parent = os.stat(directory.parent)
        if parent.st_uid not in (os.geteuid(), 0) or stat.S_IMODE(parent.st_mode) & 0o022:
            raise CacheRefused(f"'{directory.parent}' can be written by other users: the "
                               f"{what} directory must live in a directory only you (or "
                               "root) can change")
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
        info = os.lstat(directory)
    except OSError as exc:
        raise CacheRefused(f"cannot create the {what} directory '{directory}': "
                           f"{exc.strerror or exc}") from exc
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise CacheRefused(f"'{directory}' is not a directory (a symbolic link or a file)")
    _private(info, f"{what} directory", directory)
    return ResultCache(directory, _read_key(directory))


@functools.cache  # fwc does not change under a running process
def code_digest() -> str:
    """sha256 of fwc itself: every file of the package (sources, templates, the jinja2
    code and parser tables shipped as JSON, the library) and the grammar, and Python's
    version and the installed libraries that shape the output. A changed fwc never
    reads what another one cached."""
    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    from fwc import __version__

    digest.update(f"fwc {__version__}\0python {sys.version}\0".encode())
    # Every file, not a list of suffixes: templates.json is code (what jinja2 generated
    # from the templates, run as it is) and was left out; a data file added later would be.
    files = _package_files(package)
    checkout_grammar = package.parent / "grammar" / "fwc.lark"
    if checkout_grammar.is_file():
        files.append(checkout_grammar)
    for path in sorted(files):
        digest.update(str(path.relative_to(package.parent)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for library in ("lark", "lark_cython", "jinja2"):
        digest.update(f"{library} {_library_version(library)}\0".encode())
    return digest.hexdigest()


def _package_files(directory: Path) -> list[Path]:
    """Every regular file below DIRECTORY but Python's bytecode (rewritten at will)."""
    return [p for p in directory.rglob("*")
            if p.is_file() and "__pycache__" not in p.relative_to(directory).parts]


def _library_version(name: str) -> str:
    from importlib.util import find_spec

    spec = find_spec(name)
    if spec is None or spec.origin is None:
        return "absent"
    # The installed files themselves, not a version string: an edited install differs
    # too, in any of its modules (their size and time: hashing every byte of a compiled
    # extension on every run costs more than the cache saves on a small policy).
    origin = Path(spec.origin)
    files = [origin] if not spec.submodule_search_locations \
        else _package_files(origin.parent)
    signature = hashlib.sha256()
    for path in sorted(files):
        info = path.stat()
        signature.update(f"{path.relative_to(origin.parent)} {info.st_size} "
                         f"{info.st_mtime_ns}\0".encode())
    return hashlib.sha256(origin.read_bytes()).hexdigest() + " " + signature.hexdigest()
