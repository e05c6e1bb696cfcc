"""Fetch and unpack a Medical Segmentation Decathlon task with MONAI's download utilities.

Usage::

    python -m pipeline.tools.download msd Task04_Hippocampus data/ [--url URL] [--md5 MD5]

The URL and MD5 of each task come from :class:`monai.apps.DecathlonDataset`; ``--url`` points at a mirror
(any URL ``urllib`` can open, including ``file://``) and ``--md5`` overrides the expected checksum (by default the
official one, so a mirror of the official archive is still verified).

Why not ``monai.apps.download_and_extract``: before downloading it asks ``requests.head`` for the file name, which
fails for ``file://`` URLs ("No connection adapters were found") and turns any unreachable host into a bare
``Exception``. It is just ``download_url`` + ``extractall``, so this module calls those two directly: same
download (``urllib``), same MD5 verification, same safe tar extraction.

The archive is extracted into a hidden ``.<task>.partial-*`` folder inside ``<dir>`` and the task folder is renamed
into place only once it is complete with its ``dataset.json``; an interrupted run leaves no folder that looks
complete and can simply be re-run. The verified archive is kept as ``<dir>/<task>.tar`` (as ``DecathlonDataset``
does), so a re-run after an interrupted extraction does not download again.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.error import URLError

from monai.apps import DecathlonDataset, download_url, extractall
from monai.apps.utils import HashCheckError, check_hash

logger = logging.getLogger(__name__)

TASKS: dict[str, str] = dict(DecathlonDataset.resource)
MD5: dict[str, str] = dict(DecathlonDataset.md5)


class DownloadError(RuntimeError):
    """The archive could not be fetched, failed its checksum, or is not an MSD task."""


def _known_tasks() -> str:
    return ", ".join(sorted(TASKS))


def download_msd(task: str, root: Path, url: str | None = None, md5: str | None = None, progress: bool = False) -> Path:
    """Download, verify (MD5) and extract the Decathlon ``task`` into ``root``; return ``root / task``.

    ``url`` / ``md5`` override the official ones (e.g. for a mirror). If ``root / task`` already holds a
    ``dataset.json`` nothing is downloaded. Raises :class:`ValueError` for an unknown task and
    :class:`DownloadError` for an unreachable URL, a checksum mismatch or an archive without ``<task>/dataset.json``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown Decathlon task {task!r}; known tasks: {_known_tasks()}")
    url = url or TASKS[task]
    md5 = md5 or MD5[task]
    root = Path(root)
    dest = root / task
    if (dest / "dataset.json").is_file():
        logger.info("%s already has dataset.json, skipped downloading", dest)
        return dest
    if dest.exists():
        raise DownloadError(f"{dest} exists but has no dataset.json; move it away and re-run")
    root.mkdir(parents=True, exist_ok=True)

    archive = root / f"{task}.tar"
    if not (archive.exists() and check_hash(archive, md5, "md5")):
        _fetch(url, archive, md5, progress)

    partial = Path(tempfile.mkdtemp(prefix=f".{task}.partial-", dir=root))
    try:
        try:
            extractall(archive, output_dir=partial, file_type="tar", has_base=True)
        except Exception as e:  # tarfile.ReadError, unsafe member path, ...
            raise DownloadError(f"cannot extract {archive}: {e}") from e
        extracted = partial / task
        if not (extracted / "dataset.json").is_file():
            found = sorted(p.name for p in partial.iterdir())
            raise DownloadError(f"{archive} has no {task}/dataset.json (top level: {found}); not an MSD task archive")
        try:
            os.rename(extracted, dest)
        except OSError:
            if not (dest / "dataset.json").is_file():  # not a concurrent run that finished first
                raise
            logger.info("%s was completed by another run", dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    logger.info("extracted %s", dest)
    return dest


def _fetch(url: str, archive: Path, md5: str, progress: bool) -> None:
    """Download ``url`` beside ``archive`` and move it onto ``archive`` only once it matches ``md5``.

    An existing ``archive`` that does not match (an interrupted copy, or a good archive checked against a
    wrong ``--md5``) is left untouched until the replacement verifies.
    """
    if archive.exists():
        logger.warning("%s does not match md5 %s, downloading it again", archive, md5)
    logger.info("downloading %s from %s", archive.stem, url)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{archive.name}.download-", dir=archive.parent))
    tmp = tmp_dir / archive.name
    try:
        try:
            download_url(url, filepath=tmp, hash_val=md5, hash_type="md5", progress=progress)
        except HashCheckError as e:
            raise DownloadError(
                f"md5 checksum mismatch for {url} (expected {md5}): corrupt download or wrong --md5"
            ) from e
        except (URLError, OSError, RuntimeError) as e:
            reason = getattr(e, "reason", None) or e
            raise DownloadError(f"cannot download {url}: {reason}") from e
        if not tmp.is_file():  # download_url swallows PermissionError / NotADirectoryError
            raise DownloadError(f"cannot download {url} to {archive} (permission denied?)")
        os.replace(tmp, archive)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.tools.download",
        description="Download a public dataset.",
        epilog="output: <dir>/<task>/ (dataset.json, imagesTr/, labelsTr/) and the verified <dir>/<task>.tar; "
        "the task folder's path on stdout. exit status: 0 done (or already there); 1 download, checksum or "
        "extraction failed (no complete-looking folder is left); 2 usage error.",
    )
    sub = parser.add_subparsers(dest="source", required=True)
    msd = sub.add_parser(
        "msd", help="a Medical Segmentation Decathlon task (checksum-verified)", epilog=parser.epilog
    )
    msd.add_argument("task", help=f"one of: {_known_tasks()}")
    msd.add_argument("dir", type=Path, help="folder to put the task folder (and its .tar) in")
    msd.add_argument("--url", help="mirror URL of the task's .tar (http(s):// or file://)")
    msd.add_argument("--md5", help="expected md5 of the archive (default: the official one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        folder = download_msd(args.task, args.dir, url=args.url, md5=args.md5, progress=sys.stderr.isatty())
    except (ValueError, DownloadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
