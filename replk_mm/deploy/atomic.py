"""All-or-nothing file outputs: every file is written to a temporary name beside its target and
renamed onto it (``os.replace``) only when all of them were written, so a failed or interrupted
conversion never leaves a half-written output behind."""
import contextlib
import csv
import io
import os
import tempfile
from typing import Iterator, List, Sequence


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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_outputs(paths: Sequence[str], force: bool = False) -> Iterator[List[str]]:
    """Yield one temporary path per target (same directory, same extension); on a clean exit
    rename each onto its target, on an exception delete them all and re-raise.

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
        for tmp, path in zip(temps, paths):
            os.chmod(tmp, mode)
            os.replace(tmp, path)
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
