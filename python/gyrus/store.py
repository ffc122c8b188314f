"""The local model store, as laid out in docs/model-store.md.

The gyrus daemon and CLI (Rust) read and write the same directories, so this module follows that
contract exactly: ``GYRUS_HOME/models/<name>/<version>/model.yaml`` plus the model files, a
``latest`` pointer per name, and saves staged under ``.staging/`` and published by one rename.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import yaml


__version__ = "0.1.0"

# Quoted in every invalid-tag error, word for word as gyrus-spec's TAG_RULE.
TAG_RULE = (
    "lowercase letters, digits, '.', '_' and '-', starting and ending with a letter or digit, "
    "at most 63 characters (^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$)"
)
LATEST = "latest"
MODEL_YAML = "model.yaml"
STAGING = ".staging"

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_PART = re.compile(r"[a-z0-9]([-._a-z0-9]*[a-z0-9])?")
# How many versions or names an error message lists.
_SHOW_VERSIONS = 5
_SHOW_NAMES = 20


class NotFound(LookupError):
    """No model matches a tag; the message says what the store has instead."""


class AmbiguousTag(ValueError):
    """A version prefix matches more than one version; the message lists them."""


class CorruptModel(RuntimeError):
    """A stored file no longer matches the size or sha256 recorded in its model.yaml."""


def _q(s: str) -> str:
    # Double quotes, as the Rust side's {:?} writes them, so both sides' messages read alike.
    return json.dumps(s, ensure_ascii=False)


def check_part(what: str, part: str, whole: Optional[str] = None) -> None:
    """Raises ValueError, quoting the tag rule, unless ``part`` is a valid name or version."""
    if not (isinstance(part, str) and len(part) <= 63 and _PART.fullmatch(part)):
        whole = part if whole is None else whole
        raise ValueError(f"invalid model tag {_q(whole)}: the {what} {_q(part)} must be {TAG_RULE}")


@dataclass(frozen=True)
class Tag:
    """``name[:version]``; ``version`` is None for ``name`` and ``name:latest`` alike.

    A version may be a full version or a unique prefix of one.
    """

    name: str
    version: Optional[str] = None

    @classmethod
    def parse(cls, raw: Union[str, "Tag"]) -> "Tag":
        """Parses and validates ``name``, ``name:latest`` or ``name:version``."""
        if isinstance(raw, Tag):
            return raw
        if not isinstance(raw, str):
            raise TypeError(f"a model tag must be a str, not {type(raw).__name__}")
        name, sep, version = raw.partition(":")
        check_part("name", name, raw)
        if not sep or version == LATEST:
            return cls(name)
        check_part("version", version, raw)
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}:{self.version or LATEST}"


class Model:
    """One saved version: its tag (with the full version), directory and model.yaml contents."""

    def __init__(self, tag: Tag, path: Union[str, os.PathLike], info: Dict[str, Any]):
        self.tag = tag
        self.path = str(path)
        self.info = info

    @property
    def name(self) -> str:
        return self.tag.name

    @property
    def version(self) -> str:
        return self.tag.version or ""

    @property
    def module(self) -> str:
        return str(self.info.get("module", ""))

    @property
    def creation_time(self) -> _dt.datetime:
        """When it was saved (timezone-aware); from the version if model.yaml lacks it."""
        return _parse_time(self.info.get("creation_time")) or _version_time(self.version)

    def __repr__(self) -> str:
        return f'Model(tag="{self.tag}", path="{self.path}")'

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and (self.tag, self.path) == (other.tag, other.path)

    def __hash__(self) -> int:
        return hash((self.tag, self.path))


# ------------------------------------------------------------------------------------------
# reading


def home() -> Path:
    """GYRUS_HOME, or ~/.gyrus when it is unset or empty."""
    return Path(os.environ.get("GYRUS_HOME") or Path.home() / ".gyrus")


def models_dir() -> Path:
    return home() / "models"


def _parse_time(value: Any) -> Optional[_dt.datetime]:
    if isinstance(value, _dt.datetime):  # an unquoted timestamp, read by YAML itself
        return value if value.tzinfo else value.replace(tzinfo=_dt.timezone.utc)
    if not isinstance(value, str):
        return None
    # Python 3.9's fromisoformat takes neither "Z" nor 9 fraction digits (chrono writes both).
    s = re.sub(r"[zZ]$", "+00:00", value.strip())
    s = re.sub(r"\.(\d{1,6})\d*", lambda m: "." + m.group(1).ljust(6, "0"), s)
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)


def _version_bytes(version: str) -> bytes:
    """The 10 bytes a generated version encodes, else b"".

    Versions use base32hex (RFC 4648 section 7), whose alphabet is in ASCII order, so their
    strings sort as these bytes do: by creation time.
    """
    try:
        raw = base64.b32hexdecode(version.upper())
    except (ValueError, TypeError):
        return b""
    return raw if len(raw) == 10 else b""


def _version_time(version: str) -> _dt.datetime:
    """The creation time a generated version encodes (its first 6 bytes), else the epoch."""
    ms = int.from_bytes(_version_bytes(version)[:6] or b"\0", "big")
    return _EPOCH + _dt.timedelta(milliseconds=ms)


def _sort_key(m: Model):
    return (m.creation_time, _version_bytes(m.version), m.version)


def _read_version(name: str, vdir: Path) -> Optional[Model]:
    """The Model in ``vdir``, or None when it is not a complete version (no readable model.yaml)."""
    try:
        with open(vdir / MODEL_YAML, encoding="utf-8") as f:
            info = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(info, dict):
        return None
    # The directory names are what tags resolve against; model.yaml's copies are informative.
    return Model(Tag(name, vdir.name), vdir, info)


def _versions(name: str) -> List[Model]:
    """Complete versions of ``name``, newest first."""
    ndir = models_dir() / name
    try:
        entries = list(os.scandir(ndir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for e in entries:
        # Skip dot-dirs, the `latest` pointer and its temp files (plain files), and anything
        # that is not a version directory.
        if e.name.startswith(".") or e.name == LATEST or not e.is_dir():
            continue
        m = _read_version(name, Path(e.path))
        if m is not None:
            found.append(m)
    found.sort(key=_sort_key, reverse=True)
    return found


def _names() -> List[str]:
    try:
        entries = list(os.scandir(models_dir()))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def list_models(name: Optional[str] = None) -> List[Model]:
    """Every saved version (of ``name`` only, when given), newest first."""
    if name is not None:
        check_part("name", name)
        return _versions(name)
    found = [m for n in _names() for m in _versions(n)]
    found.sort(key=_sort_key, reverse=True)
    return found


def _listing(items: List[str], limit: int) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" (and {more} more)" if more > 0 else "")


def get(tag: Union[str, Tag]) -> Model:
    """Resolves ``name``, ``name:latest``, ``name:version`` or ``name:<unique prefix>``.

    Raises ValueError for an invalid tag, NotFound when nothing matches (listing what the store
    has) and AmbiguousTag when a version prefix matches several versions.
    """
    t = Tag.parse(tag)
    versions = _versions(t.name)
    if not versions:
        names = [n for n in _names() if _versions(n)]
        if names:
            raise NotFound(
                f"model {_q(str(tag))} not found: there is no model named {_q(t.name)}; "
                f"the store has {_listing(names, _SHOW_NAMES)}"
            )
        raise NotFound(f"model {_q(str(tag))} not found: the model store at {models_dir()} is empty")
    if t.version is None:
        # `latest` is what the last save published; fall back to the newest by creation_time
        # when it is missing or names a version that was deleted.
        try:
            latest = (models_dir() / t.name / LATEST).read_text(encoding="utf-8").strip()
        except OSError:
            latest = ""
        return next((m for m in versions if m.version == latest), versions[0])
    exact = [m for m in versions if m.version == t.version]
    matches = exact or [m for m in versions if m.version.startswith(t.version)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise AmbiguousTag(
            f"model tag {_q(str(tag))} is ambiguous: the version prefix {_q(t.version)} matches "
            f"{_listing([m.version for m in matches], _SHOW_VERSIONS)}; give more of the version"
        )
    raise NotFound(
        f"model {_q(str(tag))} not found: {_q(t.name)} has no version {_q(t.version)}; its "
        f"versions, newest first: {_listing([m.version for m in versions], _SHOW_VERSIONS)}"
    )


def sha256_file(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(model: Model) -> None:
    """Raises CorruptModel unless every file model.yaml lists is on disk with its size and sha256."""
    files = model.info.get("files")
    if not isinstance(files, list) or not files:
        raise CorruptModel(f"model {model.tag} at {model.path}: model.yaml lists no files")
    for entry in files:
        rel = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(rel, str) or rel.startswith("/") or ".." in rel.split("/"):
            raise CorruptModel(f"model {model.tag} at {model.path}: bad files entry {entry!r}")
        p = Path(model.path, *rel.split("/"))
        try:
            size = p.stat().st_size
        except OSError as e:
            raise CorruptModel(f"model {model.tag}: {rel} is missing from {model.path} ({e})") from e
        if size != entry.get("size") or sha256_file(p) != entry.get("sha256"):
            raise CorruptModel(
                f"model {model.tag}: {p} does not match its size and sha256 in model.yaml; the "
                f"store copy is corrupted, so save the model again"
            )


# ------------------------------------------------------------------------------------------
# writing

_clock_lock = threading.Lock()
_last_ms = 0


def _millis(t: _dt.datetime) -> int:
    return (t - _EPOCH) // _dt.timedelta(milliseconds=1)  # integers: no float rounding


def _now() -> _dt.datetime:
    """The creation time of a new save, strictly later (by a millisecond) than the last one
    this process made, so that two quick saves get increasing versions."""
    global _last_ms
    with _clock_lock:
        now = _dt.datetime.now(_dt.timezone.utc)
        ms = _millis(now)
        if ms <= _last_ms:
            ms = _last_ms + 1
            now = _EPOCH + _dt.timedelta(milliseconds=ms)
        _last_ms = ms
        return now


def new_version(now: _dt.datetime) -> str:
    """16 lowercase base32hex characters of 6 bytes of Unix milliseconds (big-endian) and 4
    random bytes, so versions sort by creation time, as strings too."""
    raw = _millis(now).to_bytes(6, "big") + secrets.token_bytes(4)
    return base64.b32hexencode(raw).decode("ascii").lower()  # 10 bytes: 16 chars, no padding


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_entries(root: Path) -> List[Dict[str, Any]]:
    entries = []
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            rel = p.relative_to(root).as_posix()
            if rel == MODEL_YAML:
                continue
            _fsync(p)  # the files must be on disk before the rename publishes them
            entries.append({"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)})
    entries.sort(key=lambda e: e["path"])
    return entries


def _latest_is_older(ndir: Path, version: str, now: _dt.datetime) -> bool:
    """Whether ``latest`` of ``ndir`` should move to ``version`` (created at ``now``): unless it
    names a readable version at least as new, by creation_time and then version (versions are
    base32hex, so they sort by time as strings). A missing, dangling or unreadable ``latest``
    counts as older; one that is newer was published by a concurrent save or import."""
    try:
        current = (ndir / LATEST).read_text(encoding="utf-8").strip()
        check_part("version", current)
    except (OSError, ValueError):  # ValueError: not UTF-8, or not a version
        return True
    if current == LATEST:
        return True
    model = _read_version(ndir.name, ndir / current)
    created = _parse_time(model.info.get("creation_time")) if model is not None else None
    if created is None:
        return True
    return (now, version) > (created, current)


def save(
    name: str,
    module: str,
    write_files: Callable[[Path], Dict[str, Any]],
    *,
    context: Dict[str, Any],
    labels: Optional[Dict[str, str]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    options: Optional[Dict[str, Any]] = None,
) -> Model:
    """Saves a new version of ``name`` and returns it.

    ``write_files(dir)`` writes the model files into a staging directory (and may check them
    there) and returns the signatures; this adds model.yaml, publishes the version with one
    rename, then points ``latest`` at it unless ``latest`` already names a newer version (a
    concurrent save's). On any error the staging directory is removed and nothing is left.
    """
    check_part("name", name)
    root = models_dir()
    staging_root = root / STAGING
    staging_root.mkdir(parents=True, exist_ok=True)
    stage = staging_root / secrets.token_hex(8)
    stage.mkdir()
    ndir = root / name
    made_ndir = False
    try:
        signatures = write_files(stage)
        now = _now()
        version = new_version(now)
        files = _file_entries(stage)
        info = {  # the contract's key order
            "name": name,
            "version": version,
            "module": module,
            "labels": dict(labels or {}),
            "options": dict(options or {}),
            "metadata": dict(metadata or {}),
            "context": context,
            "signatures": signatures,
            "creation_time": now.isoformat(timespec="microseconds"),
            "size": sum(f["size"] for f in files),
            "files": files,
        }
        with open(stage / MODEL_YAML, "w", encoding="utf-8") as f:
            yaml.safe_dump(info, f, sort_keys=False, default_flow_style=False, allow_unicode=True)
            f.flush()
            os.fsync(f.fileno())
        try:
            ndir.mkdir()
            made_ndir = True
        except FileExistsError:
            pass
        vdir = ndir / version
        os.rename(stage, vdir)  # the commit point: before it no version, after it a whole one
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if made_ndir:
            with contextlib.suppress(OSError):  # only if still empty: a concurrent save may own it
                ndir.rmdir()
        raise
    if _latest_is_older(ndir, version, now):
        tmp = ndir / f"{LATEST}.{secrets.token_hex(8)}"
        try:
            tmp.write_text(version, encoding="utf-8")  # no newline, as the contract says
            os.replace(tmp, ndir / LATEST)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
    with contextlib.suppress(OSError):
        _fsync(ndir)
    return Model(Tag(name, version), vdir, info)
