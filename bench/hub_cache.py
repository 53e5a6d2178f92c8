"""Hugging Face repositories written straight into a hub cache, as huggingface_hub stores a download: content in
blobs/ (named by sha256 for LFS files, by git blob id for small ones), a snapshot folder of links to them, and
refs/main naming the revision. With HF_HUB_OFFLINE=1 the pipeline's own download code then resolves them: the
dress rehearsal's sources and the tests'. Also the parquet layout of the leaderboard's long-form sets."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import soundfile

LFS_FROM = 10 << 10  # bytes: larger files go through LFS (hash checks: sha256), smaller are git blobs


def hub_blob(repo_dir: Path, snapshot: Path, filename: str, data: bytes, lfs: bool) -> Path:
    """Store data as huggingface_hub does; return the snapshot's link."""
    name = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "blobs" / name).write_bytes(data)
    link = snapshot / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(repo_dir / "blobs" / name, link.parent))
    return link


def write_repo(cache: Path, kind: str, repo: str, revision: str, files: dict[str, bytes]) -> Path:
    """files (path in the repo -> bytes) as repo@revision of kind "models" or "datasets"; the snapshot folder."""
    repo_dir = cache / f"{kind}--{repo.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / revision
    for name, data in sorted(files.items()):
        hub_blob(repo_dir, snapshot, name, data, lfs=len(data) >= LFS_FROM)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    return snapshot


def recordings_parquet(recordings: list[tuple[np.ndarray, str]], sample_rate: int = 16_000) -> bytes:
    """One parquet file in the leaderboard's long-form layout: `audio` as the datasets library embeds it
    ({bytes, path}, here FLAC), `text`, and metadata columns beside them as earnings-21 has."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    audio = []
    for i, (samples, _) in enumerate(recordings):
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, sample_rate, format="FLAC")
        audio.append({"bytes": buffer.getvalue(), "path": f"recording{i}.flac"})
    table = pa.table({"audio": audio, "audio_length": [len(s) / sample_rate for s, _ in recordings],
                      "company_name": [f"company {i}" for i in range(len(recordings))],
                      "text": [text for _, text in recordings]})
    out = io.BytesIO()
    pq.write_table(table, out)
    return out.getvalue()
