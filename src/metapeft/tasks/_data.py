"""Where a dataset came from, in DVC's terms: its content hash, and its DVC repository, path and revision.

Every run records ``provenance(path)``: the dataset's md5 as DVC computes it (the md5 of a file's bytes; for a
folder, the md5 of the JSON list of its files' md5s and relative paths, suffixed ``.dir``: DVC 3's ``outs.md5``),
and, when the data lies in a DVC repository, that repository, the path in it and the git revision. The hash is
computed here, without DVC, because DVC is an optional extra (``metapeft[dvc]``) and a run records its data's hash
whether or not DVC is installed; a test holds it equal to what ``dvc add`` writes. ``.dvcignore`` patterns are not
applied: a tracked folder should not hold files that DVC ignores.

``checkout(path, rev)`` reads a dataset as it was at a git revision of its DVC repository (``dvc.api``'s
``DVCFileSystem``: the ``.dvc`` file at that revision, the data from DVC's cache or remote) into a folder of the
data directory, once per revision; ``track(path)`` versions a dataset with ``dvc add``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from .._errors import MetapeftError

log = logging.getLogger("metapeft.data")
DVC_EXTRA = "DVC is not installed: pip install 'metapeft[dvc]'"


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_md5(path: str | Path) -> str:
    """DVC's md5 of a file or folder (module docstring): equal to the ``md5`` of ``dvc add PATH``'s ``.dvc`` file."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file())
    listing = [{"md5": file_md5(p), "relpath": rel} for rel, p in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest() + ".dir"


def dvc_root(path: str | Path) -> Path | None:
    """The DVC repository holding ``path`` (the nearest folder above it with a ``.dvc/`` folder), or None."""
    path = Path(path).expanduser().resolve()
    for folder in [path, *path.parents]:
        if (folder / ".dvc").is_dir():
            return folder
    return None


def _git_root(path: Path) -> Path | None:
    return next((f for f in [path, *path.parents] if (f / ".git").exists()), None)


def _dvc():
    try:
        import dvc.repo
    except ImportError:
        raise MetapeftError(DVC_EXTRA) from None
    logging.getLogger("dvc").setLevel(logging.WARNING)  # its "run git add ..." hints: metapeft prints its own
    return dvc.repo


def _tracked_md5(path: Path) -> str | None:
    """The md5 that ``PATH.dvc`` beside ``path`` records for it, when there is one."""
    dvcfile = path.with_name(path.name + ".dvc")
    if not dvcfile.is_file():
        return None
    import yaml

    try:
        outs = (yaml.safe_load(dvcfile.read_text()) or {}).get("outs") or []
    except yaml.YAMLError:
        return None
    return next((o.get("md5") for o in outs if isinstance(o, dict) and o.get("path") == path.name), None)


@dataclass(frozen=True)
class DataSource:
    """A dataset as a run reads it.

    Attributes:
        local: Where its files are read (the workspace, or a checkout of a revision).
        md5: DVC's md5 of those files.
        repo: Its DVC repository (None outside one).
        path: Its path in that repository (posix).
        rev: The git commit whose version was read (None: a workspace version that no commit is known to hold).
    """

    local: Path
    md5: str
    repo: Path | None = None
    path: str | None = None
    rev: str | None = None

    def provenance(self) -> dict:
        """What a run records of its data: ``md5`` and, in a DVC repository, ``dvc: {repo, path, rev}``."""
        out: dict = {"md5": self.md5}
        if self.repo is not None:
            out["dvc"] = {"repo": str(self.repo), "path": self.path, "rev": self.rev}
        return out


def locate(path: str | Path) -> DataSource:
    """``path`` in the workspace, with its DVC repository and the repository's current commit when it has one (a
    warning when the workspace copy differs from the version its ``.dvc`` file tracks)."""
    path = Path(path).expanduser()
    md5 = dataset_md5(path)
    root = dvc_root(path)
    if root is None:
        return DataSource(path, md5)
    rel = path.resolve().relative_to(root).as_posix()
    tracked = _tracked_md5(path.resolve())
    dirty = tracked is not None and tracked != md5
    if dirty:
        log.warning(
            "%s differs from the version %s.dvc tracks: the run records the workspace's md5, not a revision; "
            "`metapeft data track %s` versions it, --data-rev reads a tracked version",
            path,
            path.name,
            path,
        )
    git = _git_root(root)
    return DataSource(path, md5, root, rel, None if dirty or git is None else _git_head(git))


def _git_head(git: Path) -> str | None:
    """The commit checked out in ``git`` (without git or DVC installed: read from ``.git``)."""
    head_file = git / ".git" / "HEAD"
    if not head_file.is_file():
        return None
    head = head_file.read_text().strip()
    if not head.startswith("ref: "):
        return head or None
    ref = head[5:]
    loose = git / ".git" / ref
    if loose.is_file():
        return loose.read_text().strip()
    packed = git / ".git" / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return None  # a fresh repository without commits


def checkout(path: str | Path, rev: str) -> DataSource:
    """``path`` as it was at git revision ``rev`` of its DVC repository, copied once into the data directory.

    Raises:
        MetapeftError: DVC is not installed, ``path`` is not in a DVC repository, the repository has no git, ``rev``
            is unknown, or the data of that revision is in neither DVC's cache nor its remote.
    """
    from .._config import data_dir

    given = Path(path).expanduser()
    root = dvc_root(given)
    if root is None:
        raise MetapeftError(
            f"{path}: not inside a DVC repository, so it has no revisions; track it with `metapeft data track "
            f"{path}` and commit, or drop --data-rev"
        )
    repo_module = _dvc()
    rel = given.resolve().relative_to(root).as_posix()
    with repo_module.Repo(str(root)) as repo:
        from dvc.scm import NoSCM

        if isinstance(repo.scm, NoSCM):
            raise MetapeftError(
                f"{path}: its DVC repository {root} has no git (dvc init --no-scm), so it has no revisions; "
                "drop --data-rev, or use DVC in a git repository"
            )
        try:
            commit = repo.scm.resolve_rev(rev)
        except Exception:
            raise MetapeftError(
                f"--data-rev {rev}: no such revision in the git repository of {root}; give a commit, branch "
                "or tag (git log shows them)"
            ) from None
    local = data_dir() / "data-revs" / commit / rel
    done = local.parent / (local.name + ".complete")
    if not done.exists():
        from dvc.api import DVCFileSystem

        staging = local.parent / (local.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        fs = DVCFileSystem(str(root), rev=commit)
        try:
            if not fs.exists(rel):
                raise MetapeftError(
                    f"{path}: not in revision {rev} ({commit[:10]}) of {root}; was it tracked and committed then?"
                )
            fs.get(rel, str(staging), recursive=fs.isdir(rel))
        except MetapeftError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MetapeftError(
                f"{path} at {rev}: DVC could not read it ({first}); `dvc pull` fetches data missing from the cache"
            ) from None
        shutil.rmtree(local, ignore_errors=True)
        staging.rename(local)
        done.touch()
    return DataSource(local, dataset_md5(local), root, rel, commit)


def resolve(path: str | Path, rev: str | None = None) -> DataSource:
    """:func:`checkout` at ``rev`` when one is given, else :func:`locate`."""
    return checkout(path, rev) if rev else locate(path)


def track(path: str | Path) -> Path:
    """Version ``path`` with ``dvc add`` (initialising a DVC repository when none holds it: at the git root
    with git, else beside ``path`` with ``--no-scm``). Returns the ``.dvc`` file written.

    Raises:
        MetapeftError: DVC is missing, ``path`` does not exist or is the repository itself, or DVC refuses.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise MetapeftError(f"no such file or directory: {path} (give the dataset file or folder to version)")
    repo_module = _dvc()
    resolved = given.resolve()
    root = dvc_root(resolved)
    if root is None:
        git = _git_root(resolved.parent)
        root = git or resolved.parent
        repo_module.Repo.init(str(root), no_scm=git is None)
        log.info("initialised a DVC repository in %s%s", root, "" if git else " (--no-scm: no git here)")
    if resolved == root:
        raise MetapeftError(f"{path} is the DVC repository itself; track the dataset folder or file inside it")
    with repo_module.Repo(str(root)) as repo:
        try:
            repo.add(str(resolved))
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MetapeftError(f"dvc add {path}: {first}") from None
    return resolved.with_name(resolved.name + ".dvc")
