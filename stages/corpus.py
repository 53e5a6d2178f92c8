"""Stage `corpus`: the short-utterance evaluation set -> data/corpus/ (manifest.jsonl, audio/, provenance.json).

Where the utterances come from, first match wins: your manifest (corpus.local_dir/manifest.csv or
.jsonl), the demo preset's synthesized sentences (held-out voices and sentence seeds), or FLEURS at
the pinned revision (parakeet preset). At most corpus.max_per_language per language, in manifest
order. Each one is decoded to 16 kHz mono WAV, checked (readable, not silent, at most eval.max_s)
and listed with its transcript and language.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from requant.audio import SAMPLE_RATE, check_audio, decode_audio, write_wav
from requant.common import StageError, atomic_path, fail, run_cli, write_json
from requant.evalsets import CORPUS_DIR, CORPUS_MANIFEST, Utterance, find_manifest, read_manifest
from requant.params import CorpusParams, Params, load_params

log = logging.getLogger("pipeline.corpus")

# sentence seeds of the demo corpus: above those of training (< 2^30), calibration and the long clips (< 2^31)
CORPUS_SEED_BASE = 2**31


def demo_corpus(corpus: CorpusParams, seed: int, dest: Path) -> list[Utterance]:
    """corpus.max_per_language synthesized sentences per language, spoken in turn by its held-out voices."""
    from demo.synth import synthesize
    from demo.text import LANGS, sentences

    utterances = []
    for config in corpus.languages:
        lang = config.split("_")[0]
        voices = [v for v in corpus.demo_voices if v.split("+")[0].split("-")[0] == lang]
        if lang not in LANGS or not voices:
            fail(f"params.yaml: the demo corpus speaks {', '.join(LANGS)} with corpus.demo_voices; "
                 f"'{config}' has no voice there (voices: {', '.join(corpus.demo_voices)})")
        text_seed = CORPUS_SEED_BASE + int.from_bytes(hashlib.sha256(f"{seed}:{config}".encode()).digest()[:4], "little")
        rng = random.Random(f"corpus:{config}:{seed}")
        for i, text in enumerate(sentences(lang, corpus.max_per_language, text_seed)):
            audio = synthesize(text, voices[i % len(voices)], rate_wpm=rng.randint(140, 190),
                               pitch=50 + rng.randint(-8, 8))
            pad = np.zeros(round(rng.uniform(0.1, 0.4) * SAMPLE_RATE), np.float32)
            path = dest / f"{config}_{i:05d}.wav"
            write_wav(path, np.concatenate([pad, audio, pad]))
            utterances.append(Utterance(f"{config}_{i:05d}", config, path, text))
    return utterances


def fleurs_corpus(corpus: CorpusParams, dest: Path) -> tuple[list[Utterance], dict[str, str]]:
    from requant.fleurs import check_languages, expand_languages, fetch_language

    languages = expand_languages(corpus.languages)
    check_languages(languages)
    utterances, hashes = [], {}
    for config in languages:
        folder = dest / config
        rows, fetched = fetch_language(corpus.fleurs_repo, corpus.fleurs_revision, corpus.fleurs_split, config,
                                       corpus.max_per_language, folder)
        hashes |= fetched
        utterances += [Utterance(f"{config}_{Path(r.file).stem}", config, folder / r.file, r.text,
                                 f"{corpus.fleurs_repo} data/{config}/{corpus.fleurs_split}.tsv row {n}")
                       for n, r in enumerate(rows, start=1)]
    return utterances, hashes


def capped(utterances: list[Utterance], cap: int) -> list[Utterance]:
    """The first `cap` utterances of each language (0: all), grouped by language in first-seen order."""
    by_lang: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_lang.setdefault(u.lang, []).append(u)
    return [u for rows in by_lang.values() for u in (rows[:cap] if cap else rows)]


def build_corpus(p: Params, out_dir: Path = CORPUS_DIR) -> list[dict]:
    """Write out_dir/manifest.jsonl and out_dir/audio/<lang>/<id>.wav; return the manifest rows."""
    manifest = find_manifest(Path(p.corpus.local_dir))
    with atomic_path(out_dir) as tmp:
        source_dir = tmp / "source"
        source_dir.mkdir(parents=True)
        provenance: dict = {"preset": p.preset}
        if manifest is not None:
            utterances = read_manifest(manifest)
            provenance["source"] = str(manifest)
        elif p.is_demo:
            utterances = demo_corpus(p.corpus, p.seed, source_dir)
            provenance.update(source="espeak-ng", voices=p.corpus.demo_voices)
        else:
            utterances, hashes = fleurs_corpus(p.corpus, source_dir)
            provenance.update(source=f"{p.corpus.fleurs_repo}@{p.corpus.fleurs_revision}",
                              split=p.corpus.fleurs_split, sha256=hashes)
        rows = []
        for u in tqdm(capped(utterances, p.corpus.max_per_language), desc="corpus utterances", unit="utt"):
            rows.append(_decoded(u, tmp, p.eval.max_s))
        shutil.rmtree(source_dir)
        (tmp / CORPUS_MANIFEST).write_text("".join(_json_line(r) for r in rows), encoding="utf-8")
        provenance["utterances"] = {lang: sum(r["lang"] == lang for r in rows) for lang in dict.fromkeys(
            r["lang"] for r in rows)}
        write_json(tmp / "provenance.json", provenance)
    log.info("corpus: %s", ", ".join(f"{n} {lang}" for lang, n in provenance["utterances"].items()))
    return rows


def _decoded(u: Utterance, out: Path, max_s: float) -> dict:
    """Decode one utterance to out/audio/<lang>/<id>.wav, naming its manifest row in any error."""
    try:
        audio = decode_audio(u.audio, SAMPLE_RATE)
        check_audio(audio, str(u.audio))
    except StageError as err:
        fail(f"{u.where or u.id}: {err}")
    duration = len(audio) / SAMPLE_RATE
    if duration > max_s:
        fail(f"{u.where or u.id}: {u.audio} lasts {duration:.1f} s, over eval.max_s={max_s:g} s; "
             "a short-utterance corpus holds clips of seconds: cut it or drop the row")
    relative = Path("audio") / u.lang / f"{u.id}.wav"
    (out / relative).parent.mkdir(parents=True, exist_ok=True)
    write_wav(out / relative, audio)
    return {"id": u.id, "lang": u.lang, "audio": relative.as_posix(), "text": u.text, "duration_s": round(duration, 4)}


def _json_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n"


def main() -> None:
    build_corpus(load_params())


if __name__ == "__main__":
    run_cli(main)
