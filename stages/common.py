"""Small shared helpers: atomic outputs, JSON, hashing, logging, and one-line fatal errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

log = logging.getLogger("pipeline")


class StageError(RuntimeError):
    """An error the user can act on; printed as one line, without a traceback."""


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)


def fail(message: str) -> NoReturn:
    raise StageError(message)


def run_cli(main: Callable[[], Any]) -> None:
    """Run a stage entry point: log to stderr, and turn StageError/ParamsError into a one-line exit 1."""
    from stages.params import ParamsError

    setup_logging()
    try:
        main()
    except (StageError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `final` only if the block completes.

    Works for files and directories. An interrupted or failed block leaves nothing under `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _remove(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | Path, data: Any) -> None:
    """Write stable, sorted JSON atomically (byte-identical for equal data)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
