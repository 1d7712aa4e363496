"""All-or-nothing file outputs: every file is written to a temporary name beside its target,
flushed to the disk (``fsync``) and renamed onto it (``os.replace``) only when all of them were
written, so a failed, interrupted or killed writer never leaves a half-written output behind (a
killed one may leave its temporary files: :func:`leftover_temporaries` finds them)."""
import contextlib
import csv
import io
import os
import re
import tempfile
from typing import Iterator, List, Sequence

# mkstemp's names here: '.' + target stem + '.' + 8 random characters + '.tmp' + target extension
_TEMPORARY = re.compile(r'\..+\.[a-z0-9_]{8}\.tmp(\.[^.]*)?')


def check_outputs_free(paths: Sequence[str], force: bool) -> None:
    """Refuse to overwrite existing outputs unless ``force``.

    Raises:
        FileExistsError: naming the first existing path and the way to overwrite it.
    """
    if force:
        return
    for path in paths:
        if os.path.exists(path):
            raise FileExistsError(f'{path} already exists; pass --force (force=True) to overwrite '
                                  'it, or choose another output directory')


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def leftover_temporaries(folder: str) -> List[str]:
    """The temporary files of :func:`atomic_outputs` in ``folder`` (those of killed writers)."""
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder)
                  if _TEMPORARY.fullmatch(name))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str], force: bool = False) -> Iterator[List[str]]:
    """Yield one temporary path per target (same directory, same extension); on a clean exit
    fsync each, rename it onto its target and fsync the folder, on an exception delete them all
    and re-raise.

    Example::

        with atomic_outputs(['out/a.pth', 'out/a.py']) as (tmp_pth, tmp_py):
            torch.save(obj, tmp_pth)
            cfg.dump(tmp_py)
    """
    check_outputs_free(paths, force)
    temps: List[str] = []
    try:
        for path in paths:
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            stem, ext = os.path.splitext(os.path.basename(path))
            fd, tmp = tempfile.mkstemp(prefix=f'.{stem}.', suffix=f'.tmp{ext}', dir=directory)
            os.close(fd)
            temps.append(tmp)
        yield list(temps)
        mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; give the usual permissions
        for tmp in temps:
            os.chmod(tmp, mode)
            _fsync(tmp)
        for tmp, path in zip(temps, paths):
            os.replace(tmp, path)
        for directory in {os.path.dirname(os.path.abspath(path)) for path in paths}:
            _fsync(directory)  # the renames themselves
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (overwriting it, creating its folder) through a temporary file."""
    with atomic_outputs([path], force=True) as (tmp, ):
        with open(tmp, 'w') as f:
            f.write(text)


def write_csv_atomic(path: str, columns: Sequence[str], rows: Sequence[dict]) -> None:
    """Write ``rows`` (dicts, a missing column left empty) as a CSV table with a header line."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
