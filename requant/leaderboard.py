"""The Open ASR Leaderboard's long-form sets: parquet files of a Hugging Face dataset repo, read row by row.

A set (params.yaml leaderboard_sets) is a glob of parquet files at a pinned revision, fetched through
huggingface_hub's cache; each file is checked against the hash the repository states for it
(requant.fleurs.verify_download). Each row holds one recording: `audio` as the datasets library stores it
({bytes, path}: the file's own bytes, any container) and its transcript (`text`, or one of the other column
names the leaderboard's own loader accepts). Rows are read one at a time, so that a 17 GB set never sits in
memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from requant.common import fail
from requant.fleurs import verify_download
from requant.params import LeaderboardSet

TEXT_COLUMNS = ("text", "sentence", "normalized_text", "transcript", "transcription")  # the leaderboard's order


@dataclass(frozen=True)
class Recording:
    index: int  # in the set's order: files sorted by name, rows in file order
    source: str  # where it came from, for provenance: hf://datasets/<repo>@<revision>/<file>#<row>
    audio: bytes  # the audio file's own bytes
    suffix: str  # its extension, from the stored path (".wav", ".mp3", ...), for the decoder's sake
    text: str


def set_files(spec: LeaderboardSet) -> list[Path]:
    """The set's parquet files at its revision, fetched into (or found in) the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(spec.repo, repo_type="dataset", revision=spec.revision,
                                        allow_patterns=[spec.files]))
    except Exception as err:  # noqa: BLE001 - hub, HTTP and offline errors all end here
        fail(f"leaderboard set '{spec.name}': cannot fetch {spec.files} from the dataset {spec.repo}@{spec.revision} "
             f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the network and "
             f"leaderboard_sets.{spec.name} in params.yaml")
    files = sorted(folder.glob(spec.files))
    if not files:
        fail(f"leaderboard set '{spec.name}': no file of {spec.repo}@{spec.revision} matches '{spec.files}'; "
             f"fix leaderboard_sets.{spec.name}.files (the split's parquet files, e.g. earnings21/test-*.parquet)")
    for path in files:
        verify_download(path, f"leaderboard set '{spec.name}'")
    return files


def recordings(spec: LeaderboardSet, files: list[Path], limit: int) -> Iterator[Recording]:
    """The set's first `limit` recordings."""
    import pyarrow.parquet as pq

    index = 0
    for path in files:
        relative = path.as_posix().split(f"/{spec.revision}/", 1)[-1]
        try:
            table = pq.ParquetFile(path)
            columns = table.schema_arrow.names
            text = next((name for name in TEXT_COLUMNS if name in columns), None)
            if "audio" not in columns or text is None:
                fail(f"leaderboard set '{spec.name}': {relative} has columns {columns}; it needs 'audio' and one of "
                     f"{', '.join(TEXT_COLUMNS)}")
            for row_number, row in enumerate(_rows(table, ["audio", text])):
                if index >= limit:
                    return
                audio = row["audio"] or {}
                if not audio.get("bytes"):
                    fail(f"leaderboard set '{spec.name}': {relative} row {row_number} holds no audio bytes")
                yield Recording(index, f"hf://datasets/{spec.repo}@{spec.revision}/{relative}#{row_number}",
                                audio["bytes"], Path(audio.get("path") or "audio.bin").suffix.lower() or ".bin",
                                row[text] or "")
                index += 1
        except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError: a truncated or foreign file
            fail(f"leaderboard set '{spec.name}': {relative} is not a readable parquet file ({err}); delete it "
                 "from the Hugging Face cache and run again")


def _rows(table: object, columns: list[str]) -> Iterator[dict]:
    for batch in table.iter_batches(batch_size=1, columns=columns):  # type: ignore[attr-defined]
        yield from batch.to_pylist()
