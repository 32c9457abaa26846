"""Signed Tune state: ``run --resume`` never unpickles a file stagetune did not sign.

``tune.Tuner.restore`` (Ray 2.60) unpickles these files of the experiment directory:

* ``tuner.pkl`` (``pickle``): the Tuner, its trainable, configs, searcher, scheduler, callbacks;
* the newest ``experiment_state-*.json``: JSON holding cloudpickled blobs (each trial's
  storage, resources, results, stopper, ...), read by the controller and ``ExperimentAnalysis``;
* the newest ``search_gen_state-*.json`` (cloudpickle despite its name) and
  ``searcher-state-*.pkl`` (the Optuna searcher), ``callback-states-*.pkl`` and
  ``basic-variant-state-*.json`` where they exist: Tune copies every top-level ``*.json`` and
  ``*.pkl`` to its staging directory on restore and reads them from there;
* ``<trial>/error.pkl`` (cloudpickle) of trials that failed, when the results are collected.

Whoever can write the work directory could plant code in any of them. stagetune signs each
with an HMAC-SHA256 under a per-user key kept outside the work directory
(``$STAGETUNE_KEY_FILE``, default ``~/.config/stagetune/key``, mode 0600) and verifies them
before Tune reads anything; a file no signature covers is refused (exit 2, one line).

When signatures are written. ``tuner.pkl`` is written once, when the Tuner is built, and is
signed right after. Tune writes each snapshot into a driver-local staging directory, then asks
every callback for its state, then copies the directory into the experiment directory in a
background thread. :class:`TuneStateSigner` signs the staging files when asked for its state
and keeps a copy of them, so a file reaches the work directory only after it was signed. A
driver killed at any moment leaves there the last signed snapshot, an older signed one (the
copy lagged), a truncated copy of a signed one (the copy was cut short), or nothing yet of it.
A resume accepts exactly these, puts the last signed snapshot back in place, and Tune restores
from it. Anything else is refused before anything is read.

One cohesive module (over 400 lines): the signing protocol and its verification, read together.
"""

from __future__ import annotations

import contextlib
import fnmatch
import glob
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
from pathlib import Path
from typing import Any, Final

from ray.tune import Callback

from stagetune.errors import ConfigError

__all__ = ["KEY_ENV", "SIGNED_DIR", "TuneStateSigner", "key_file", "load_key"]

log = logging.getLogger(__name__)

KEY_ENV: Final = "STAGETUNE_KEY_FILE"
"""Environment variable naming the signing key file (default ``~/.config/stagetune/key``)."""
SIGNED_DIR: Final = "tune_signed"
"""Under the work directory: the signed manifest and copies of the signed Tune state."""

_TUNER_PKL: Final = "tuner.pkl"
_SNAPSHOT: Final = "experiment_state-*.json"
_ERROR_PKL: Final = "error.pkl"
_MANIFEST: Final = "manifest.json"
_BLOBS: Final = "blobs"
_FORMAT: Final = 1
_KEY_MIN_BYTES: Final = 32
_GENERATIONS: Final = 8
"""Signed versions kept per file: the experiment directory may lag the newest by a few."""


def key_file() -> Path:
    """Where the signing key lives: ``$STAGETUNE_KEY_FILE``, else
    ``$XDG_CONFIG_HOME/stagetune/key`` (``~/.config/stagetune/key``)."""
    env = os.environ.get(KEY_ENV)
    if env:
        return Path(env).expanduser().absolute()
    config = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return (Path(config).expanduser() / "stagetune" / "key").absolute()


def _create_key(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another driver created it first
    except OSError as exc:
        raise ConfigError(
            KEY_ENV,
            str(path),
            f"cannot create the signing key there ({exc.strerror or exc}); point "
            f"{KEY_ENV} to a writable path outside the work directory",
        ) from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(_KEY_MIN_BYTES) + "\n")
    log.info("created the signing key %s", path)


def load_key(*, workdir: Path, create: bool) -> bytes:
    """The user's signing key, checked: a regular file outside ``workdir``, owned by the user,
    closed to group and others. Created (mode 0600) when missing and ``create`` is set."""
    path = key_file()
    if path.resolve().is_relative_to(workdir.resolve()):
        raise ConfigError(
            KEY_ENV,
            str(path),
            "the signing key must live outside the work directory (whoever can write the "
            f"study could read it there); point {KEY_ENV} elsewhere",
        )
    if not path.exists():
        if not create:
            raise ConfigError(
                KEY_ENV,
                str(path),
                "no signing key there, so the study's Tune state cannot be verified; set "
                f"{KEY_ENV} to the key that signed it, or start a new study in another --workdir",
            )
        _create_key(path)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(KEY_ENV, str(path), "the signing key is not a regular file")
    if st.st_uid != os.getuid():
        raise ConfigError(
            KEY_ENV,
            str(path),
            f"the signing key belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); "
            "use a key of your own",
        )
    if st.st_mode & 0o077:
        raise ConfigError(
            KEY_ENV,
            str(path),
            f"the signing key is open to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run 'chmod 600 {path}'",
        )
    key = path.read_bytes().strip()
    if len(key) < _KEY_MIN_BYTES:
        raise ConfigError(
            KEY_ENV,
            str(path),
            f"the signing key holds {len(key)} bytes, at least {_KEY_MIN_BYTES} are needed; "
            "delete it to have a new one created (studies it signed can then not be resumed)",
        )
    return key


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_restore_state(rel: str) -> bool:
    """Whether Tune may unpickle the experiment-directory file ``rel`` on restore."""
    parts = rel.split("/")
    if len(parts) == 1:
        return not rel.startswith(".") and rel.endswith((".json", ".pkl"))
    return len(parts) == 2 and parts[1] == _ERROR_PKL


class _ExperimentDir:
    """The Tune experiment directory, local or behind a pyarrow URI (``storage_path``)."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        if "://" not in uri:
            uri = str(Path(uri).expanduser().absolute())
        self._fs, self._root = pafs.FileSystem.from_uri(uri)

    def _path(self, rel: str) -> str:
        return f"{self._root.rstrip('/')}/{rel}"

    def restore_state(self) -> dict[str, bytes]:
        """Every file Tune may unpickle on restore, by path relative to the directory."""
        import pyarrow.fs as pafs

        out: dict[str, bytes] = {}
        selector = pafs.FileSelector(self._root, allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if info.type == pafs.FileType.File and _is_restore_state(info.base_name):
                out[info.base_name] = self.read(info.base_name)
            elif info.type == pafs.FileType.Directory:
                rel = f"{info.base_name}/{_ERROR_PKL}"
                if self._fs.get_file_info(self._path(rel)).type == pafs.FileType.File:
                    out[rel] = self.read(rel)
        return out

    def read(self, rel: str) -> bytes:
        with self._fs.open_input_stream(self._path(rel)) as f:
            return bytes(f.readall())

    def write(self, rel: str, data: bytes) -> None:
        path = self._path(rel)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with self._fs.open_output_stream(tmp) as f:
            f.write(data)
        self._fs.move(tmp, path)


def _read_local_restore_state(root: Path) -> dict[str, bytes]:
    """The files Tune may unpickle on restore, in a local (staging) directory."""
    out: dict[str, bytes] = {}
    for p in root.iterdir():
        rel = p.name if p.is_file() else f"{p.name}/{_ERROR_PKL}"
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            if _is_restore_state(rel):
                out[rel] = (root / rel).read_bytes()
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TuneStateSigner(Callback):
    """Signs the study's Tune state as Tune writes it, and verifies it before a resume.

    Args:
        experiment_uri: the Tune experiment directory (``<storage_path>/<name>``).
        workdir: the study's work directory; the signatures live in ``<workdir>/tune_signed``.
        name: the experiment's name, bound into the signature (another study's signed state
            cannot be swapped in).
        key: the signing key (:func:`load_key`).
        signed_dir: where the signatures live; default ``<workdir>/tune_signed`` (a study with
            several Tune experiments gives each its own).
    """

    def __init__(
        self,
        *,
        experiment_uri: str,
        workdir: Path,
        name: str,
        key: bytes,
        signed_dir: Path | None = None,
    ) -> None:
        self._uri = experiment_uri
        self._dir = signed_dir or workdir / SIGNED_DIR
        self._name = name
        self._key = key
        self._files: dict[str, list[str]] = {}
        """Path in the experiment directory -> signed SHA-256 digests, newest first."""
        self._staging: Path | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into tuner.pkl, in the work directory: never the key.
        return {**self.__dict__, "_key": b""}

    # -- the manifest ----------------------------------------------------------------------
    def _mac(self, body: dict[str, Any]) -> str:
        if not self._key:
            raise RuntimeError("this copy of the signer holds no key")
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hmac.new(self._key, canonical, hashlib.sha256).hexdigest()

    def _body(self, files: dict[str, list[str]]) -> dict[str, Any]:
        return {"format": _FORMAT, "experiment": self._name, "files": files}

    def _blob(self, digest: str) -> Path:
        return self._dir / _BLOBS / digest

    def _save(self, files: dict[str, list[str]], fresh: dict[str, bytes]) -> None:
        """Keep ``fresh`` contents (by digest), then the signed manifest, then drop blobs no
        longer listed; a kill between two steps leaves the previous manifest valid."""
        (self._dir / _BLOBS).mkdir(parents=True, exist_ok=True)
        for data in fresh.values():
            blob = self._blob(_sha256(data))
            if not blob.exists():
                _atomic_write(blob, data)
        body = self._body(files)
        manifest = {**body, "mac": self._mac(body)}
        _atomic_write(self._dir / _MANIFEST, json.dumps(manifest, indent=1).encode())
        self._files = files
        kept = {d for digests in files.values() for d in digests}
        for blob in (self._dir / _BLOBS).iterdir():
            if blob.name not in kept:
                blob.unlink(missing_ok=True)

    def _sign(self, contents: dict[str, bytes]) -> None:
        files = dict(self._files)
        fresh: dict[str, bytes] = {}
        for rel, data in contents.items():
            digest = _sha256(data)
            old = files.get(rel, [])
            if old[:1] != [digest]:
                files[rel] = [digest, *[d for d in old if d != digest]][:_GENERATIONS]
                fresh[rel] = data
        if fresh:
            self._save(files, fresh)

    def sign_tuner(self) -> None:
        """Start the signatures of a new Tune experiment: its just-written ``tuner.pkl``."""
        self._files = {}
        self._sign({_TUNER_PKL: _ExperimentDir(self._uri).read(_TUNER_PKL)})

    # -- resume ----------------------------------------------------------------------------
    def _refuse(self, what: str, why: str) -> ConfigError:
        return ConfigError(
            "--resume",
            what,
            f"{why}; nothing was loaded from it. Restore the study's own files, or start a new "
            "study in another --workdir",
        )

    def _verified_manifest(self) -> dict[str, list[str]] | None:
        path = self._dir / _MANIFEST
        if not path.is_file():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            files = manifest["files"]
            body = self._body(files)
            valid = isinstance(files, dict) and hmac.compare_digest(
                str(manifest.get("mac", "")), self._mac(body)
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            valid = False
        if not valid:
            raise self._refuse(
                str(path),
                "the signature of the study's Tune state does not verify: it was altered, or "
                f"signed with another key than {key_file()} (set {KEY_ENV} to the key that signed "
                "it)",
            )
        for digests in files.values():
            for digest in digests:
                blob = self._blob(digest)
                if not blob.is_file() or _sha256(blob.read_bytes()) != digest:
                    raise self._refuse(str(blob), "a signed copy of the Tune state was altered")
        return {str(rel): [str(d) for d in digests] for rel, digests in files.items()}

    def _check_live(self, rel: str, data: bytes, digests: list[str]) -> bool:
        """Whether ``data`` is a signed version of ``rel``, or a copy of one cut short."""
        if _sha256(data) in digests:
            return True
        return any(
            len(data) < len(blob) and blob.startswith(data)
            for blob in (self._blob(d).read_bytes() for d in digests)
        )

    def restore_verified(self) -> bool:
        """Verify the experiment directory and put the last signed snapshot in place.

        Returns whether Tune has a snapshot to restore from. Raises :class:`ConfigError`
        (nothing read, nothing changed) for a file no signature covers, a signature that does
        not verify, or a copy that was altered.
        """
        exp = _ExperimentDir(self._uri)
        live = exp.restore_state()
        if _TUNER_PKL not in live:
            return False  # no Tune experiment there: a new one starts
        files = self._verified_manifest()
        if files is None:
            raise self._refuse(
                self._uri,
                "the study's Tune state carries no signature (written by a stagetune that did "
                "not sign it, or the signature was removed), and resuming from it could run "
                "code planted in it",
            )
        for rel, data in sorted(live.items()):
            if rel not in files:
                raise self._refuse(f"{self._uri}/{rel}", "no signature covers this Tune state file")
            if not self._check_live(rel, data, files[rel]):
                raise self._refuse(
                    f"{self._uri}/{rel}",
                    "this Tune state file changed after stagetune signed it",
                )
        for rel, digests in sorted(files.items()):
            signed = self._blob(digests[0]).read_bytes()
            if live.get(rel) != signed:
                exp.write(rel, signed)
                log.info("resume: %s put back to its last signed version", rel)
        self._files = files
        return any(fnmatch.fnmatch(rel, _SNAPSHOT) for rel in files)

    # -- Tune callback hooks ---------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # A trial's driver-side directory lies in the experiment's staging directory.
        with contextlib.suppress(RuntimeError):  # a trial without a directory yet
            if trials and trials[0].local_path:
                self._staging = Path(trials[0].local_path).parent

    def _staging_dir(self) -> Path | None:
        if self._staging is None:
            # Tune's first snapshot comes before any trial could name the directory: the one
            # it was just written to is the newest of this experiment in the Ray session.
            from ray.train.constants import _get_ray_train_session_dir

            pattern = f"*/{glob.escape(self._name)}/driver_artifacts/{_SNAPSHOT}"
            snapshots = list(Path(_get_ray_train_session_dir()).glob(pattern))
            if snapshots:
                self._staging = max(snapshots, key=lambda p: p.stat().st_mtime_ns).parent
        return self._staging

    def get_state(self) -> dict[str, Any] | None:
        """Called by Tune between writing a snapshot and copying it to the experiment
        directory: signs it then. Keeps no Tune state of its own (returns None)."""
        staging = self._staging_dir()
        if staging is None:
            log.warning("no Tune snapshot found to sign; a resume will refuse this one")
            return None
        self._sign(_read_local_restore_state(staging))
        return None
