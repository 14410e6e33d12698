"""Output folders and files that never destroy what we did not write.

Every command that writes a folder (``fsc simulate``, ``export``, ``train``, ``predict``) goes
through :func:`check_output_folder` before any work starts and through :class:`AtomicFolder` to
write. The rules, in order:

* ``/``, the working directory, any parent of it, and the user's home are never an output folder.
* A missing folder is fine if its nearest existing ancestor is a folder we can really write into
  (probed by creating and removing a hidden folder there: ``os.access`` says yes to root on a
  read-only mount).
* An existing, non-empty folder is replaced only with ``--overwrite``, only if it is an output of
  the same kind that we wrote (our marker file, or for folders from older versions the kind's
  signature file), and only if it holds nothing but what we wrote: the marker lists every file,
  and a folder without a list may hold only the kind's own top-level names. Anything else is
  named in a one-line error and nothing is touched.

A folder is written under a unique hidden sibling name and renamed into place at the end, so an
interruption (Ctrl-C, SIGTERM, an error) never leaves a folder that looks complete, and removes
only the partial folder it created itself.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from fewshot_cryoet.core.errors import SettingError

#: The marker file written into every model, predictions and export folder.
MARKER = ".fsc-output.json"


@dataclass(frozen=True)
class OutputKind:
    """One kind of folder we write: what it is called in messages, the file that identifies a
    folder of this kind written before markers existed, its own top-level entries, and the file
    names its sub-folders hold (folders without a marker may hold nothing else)."""

    name: str
    signature: str
    entries: frozenset[str]
    is_signature_ours: Callable[[Path], bool] = lambda path: True
    contents: dict[str, str] = field(default_factory=dict)  # sub-folder → glob of the files we put there


def _json_has(*keys: str) -> Callable[[Path], bool]:
    def check(path: Path) -> bool:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)
    return check


KINDS: dict[str, OutputKind] = {
    "dataset": OutputKind("a data set", "manifest.json",
                          frozenset({"manifest.json", "labels.csv", "masks.npy", "volumes", MARKER}),
                          _json_has("format", "content_hash"), {"volumes": "snr_*.npy"}),
    "model": OutputKind("a model folder", "model.json", frozenset({"model.json", "weights.pt", MARKER}),
                        _json_has("method", "normalisation")),
    "predictions": OutputKind("a predictions folder", "predictions.csv",
                              frozenset({"predictions.csv", "predictions.star", "summary.png", "segmentations",
                                         "probabilities", "skipped.csv", MARKER}),
                              contents={"segmentations": "*.mrc", "probabilities": "*.mrc"}),
    "scene": OutputKind("a simulated scene", "tomogram.mrc",
                        frozenset({"tomogram.mrc", "labels.mrc", "particles_relion4.star", "particles_relion5.star",
                                   "classes.csv", "copick.json", "copick", MARKER})),
    "export": OutputKind("an export folder", "particles.star",
                         frozenset({"particles.star", "subtomograms", "masks", MARKER}),
                         contents={"subtomograms": "*.mrc", "masks": "*.mrc"}),
}


def _protected(path: Path) -> str | None:
    """Why ``path`` may never be an output folder, or None."""
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == Path(resolved.anchor):
        return "is the file-system root"
    if resolved == cwd or resolved in cwd.parents:
        return "is the working directory or one of its parents"
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no home folder known (a bare container): nothing more to protect
        return None
    if resolved == home or resolved in home.parents:
        return "is your home folder or one of its parents"
    return None


def _probe_writable(folder: Path) -> str | None:
    """None if we can create (and remove) an entry in ``folder``, else the reason."""
    try:
        probe = folder / f".fsc-probe-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    return None


def check_writable_parent(out: Path, setting: str = "out") -> None:
    """Refuse ``out`` (a file or folder to be created) if its nearest existing ancestor is not a
    folder we can write into."""
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise SettingError(setting, f"{setting} {out}: {ancestor} is a file, not a folder; choose another {setting}")
    reason = _probe_writable(ancestor)
    if reason:
        raise SettingError(setting, f"{setting} {out}: cannot write into {ancestor} ({reason}); choose another {setting}")


def check_output_file(out: Path, overwrite: bool, setting: str = "out") -> None:
    """Refuse, before any work, a file we must not write: one in a place we cannot write, a folder
    or a link at that path, or an existing file without ``overwrite`` (we cannot tell a user's file
    from ours, so replacing one is asked for)."""
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise SettingError(setting, f"{setting} {out}: exists and is not a plain file; choose another {setting}")
    if out.exists() and not overwrite:
        raise SettingError(setting, f"{setting} {out}: exists; pass --overwrite to replace it or choose another {setting}")
    check_writable_parent(out, setting)


def check_report_folder(out: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str,
                        setting: str = "out") -> None:
    """Refuse, before any work, a folder to write a report's files into (files of fixed names,
    replaced in place; nothing else is touched): a protected place, a file, or a folder that holds
    other things but no report of ours, unless ``overwrite``. A folder holding our report is
    updated without asking: regenerating it from its source is what the command is for."""
    out = Path(out)
    why = _protected(out)
    if why:
        raise SettingError(setting, f"{setting} {out}: {why}; choose a folder for {what}")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise SettingError(setting, f"{setting} {out}: exists and is not a folder; choose another {setting}")
    if out.is_dir() and any(out.iterdir()) and not is_ours(out) and not overwrite:
        raise SettingError(setting, f"{setting} {out}: folder is not empty and holds no {what} written by fsc; pass "
                                    f"--overwrite to write into it anyway (only the report's files are replaced) or "
                                    f"choose another {setting}")
    if not out.is_dir():
        check_writable_parent(out, setting)
    elif reason := _probe_writable(out):  # the report's files go into out itself
        raise SettingError(setting, f"{setting} {out}: cannot write into it ({reason}); choose another {setting}")


def _marker(folder: Path) -> dict | None:
    """``folder``'s marker, or None when it has no readable one."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def marker_files(folder: Path) -> list[str] | None:
    """The files and folders listed in ``folder``'s marker, or None when it has no readable marker."""
    try:
        data = _marker(folder)
        return [str(f) for f in data["files"]] + [str(f) for f in data.get("folders", [])]
    except (KeyError, TypeError, AttributeError):
        return None


def _foreign_entry(out: Path, kind: OutputKind) -> str | None:
    """The first entry in ``out`` that we did not write, or None."""
    listed = marker_files(out)
    if listed is not None:
        allowed = set(listed) | {MARKER}
        for path in sorted(out.rglob("*")):
            relative = path.relative_to(out).as_posix()
            if path.is_dir() and not path.is_symlink():
                if relative not in allowed and not any(f.startswith(relative + "/") for f in allowed):
                    return relative
            elif relative not in allowed:
                return relative
        return None
    for entry in sorted(out.iterdir()):
        if entry.name not in kind.entries:
            return entry.name
        if entry.is_dir() and not entry.is_symlink():  # a folder from before markers: only our files inside
            pattern = kind.contents.get(entry.name)
            if pattern is None:
                return entry.name
            for inner in sorted(entry.iterdir()):
                if inner.is_symlink() or not inner.is_file() or not inner.match(pattern):
                    return inner.relative_to(out).as_posix()
    return None


def check_output_folder(out: Path, overwrite: bool, kind: str, setting: str = "out") -> None:
    """Refuse, before any work, an output folder we must not write or replace (see module docs)."""
    out = Path(out)
    spec = KINDS[kind]
    why = _protected(out)
    if why:
        raise SettingError(setting, f"{setting} {out}: {why}; choose a new folder for {spec.name}")
    if not out.exists() and not out.is_symlink():
        check_writable_parent(out, setting)
        return
    if out.is_symlink() or not out.is_dir():
        raise SettingError(setting, f"{setting} {out}: exists and is not a folder; choose another {setting}")
    try:
        empty = not any(out.iterdir())
    except PermissionError:
        raise SettingError(setting, f"{setting} {out}: cannot read the folder (permission denied); choose another {setting}") from None
    if not empty:
        marker = _marker(out)
        ours = (marker.get("kind") == kind if marker is not None else
                (out / spec.signature).is_file() and spec.is_signature_ours(out / spec.signature))
        if not ours:
            raise SettingError(setting, f"{setting} {out}: folder is not empty and is not {spec.name} written by fsc; "
                           f"choose another {setting}")
        if not overwrite:
            raise SettingError(setting, f"{setting} {out}: already holds {spec.name}; pass --overwrite to replace it "
                           f"or choose another {setting}")
        foreign = _foreign_entry(out, spec)
        if foreign is not None:
            raise SettingError(setting, f"{setting} {out}: holds {foreign!r}, which fsc did not write; move it away or "
                           f"choose another {setting} (nothing was replaced)")
    check_writable_parent(out, setting)


#: Marks a resumable partial folder as ours (see :class:`AtomicFolder`); removed at commit.
RESUMABLE = ".fsc-resumable"


class AtomicFolder:
    """Write a folder under a unique hidden name and move it into place at :meth:`commit`.

    Use as a context manager: an exception (Ctrl-C and SIGTERM included) removes the partial
    folder and nothing else. ``commit`` writes the marker listing every file, re-checks that the
    old folder is still ours to replace, swaps the new one in and only then removes the old one.
    """

    def __init__(self, out: Path, kind: str, overwrite: bool = False, setting: str = "out",
                 marker: bool = True, resume_key: str | None = None) -> None:
        self.out = Path(out)
        self.kind = kind
        self.overwrite = overwrite
        self.setting = setting
        self.marker = marker
        check_output_folder(self.out, overwrite, kind, setting)
        # A resumable writer names its partial folder after what it writes (``resume_key``), so
        # the same command run again finds it and continues; otherwise the name is unique.
        # Such a folder carries RESUMABLE from its creation: a folder of that name without it was not
        # written by fsc and is refused, never reused, written into or removed.
        self.tmp = self.out.parent / f".{self.out.name}.partial-{resume_key or uuid.uuid4().hex[:8]}"
        self.resumed = resume_key is not None and self.tmp.exists()
        if self.resumed:
            if self.tmp.is_symlink() or not (self.tmp / RESUMABLE).is_file():
                raise SettingError(setting, f"{setting} {self.out}: {self.tmp} exists and was not written by fsc; "
                                            "move it away")
            return
        try:
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise SettingError(setting, f"{setting} {self.out}: cannot create the folder ({exc.strerror}); "
                           f"choose a writable {setting}") from None
        if resume_key is not None:
            (self.tmp / RESUMABLE).touch()

    def __enter__(self) -> AtomicFolder:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def commit(self, extra: dict[str, Any] | None = None) -> Path:
        from fewshot_cryoet.core.version import __version__

        (self.tmp / RESUMABLE).unlink(missing_ok=True)  # a finished folder is not a partial one
        if self.marker:
            entries = sorted(self.tmp.rglob("*"))
            write_json(self.tmp / MARKER, {
                "kind": self.kind, "package_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "files": [p.relative_to(self.tmp).as_posix() for p in entries if p.is_file()],
                "folders": [p.relative_to(self.tmp).as_posix() for p in entries if p.is_dir()], **(extra or {}),
            })
        previous = None
        if self.out.exists():
            check_output_folder(self.out, self.overwrite, self.kind, self.setting)  # still ours to replace?
            if any(self.out.iterdir()):
                previous = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(self.out, previous)
            else:
                self.out.rmdir()
        os.replace(self.tmp, self.out)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
        return self.out


def write_text(path: Path, text: str) -> Path:
    """Write a text file atomically (see :func:`save_atomic`)."""
    return save_atomic(Path(path), lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any, default: Callable | None = str) -> Path:
    """:func:`write_text` of indented JSON (``default`` converts what JSON cannot hold)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=default) + "\n")


def save_atomic(path: Path, save: Callable[[Path], None]) -> Path:
    """Atomic version of any writer that takes a path (``torch.save``, ``savefig``, text...): it
    writes a unique temporary sibling, then renames it, so a reader never sees a half-written file
    and an interrupted write leaves the old one intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
