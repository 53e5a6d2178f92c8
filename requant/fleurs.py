"""FLEURS from its Hugging Face dataset repo at a pinned revision, through huggingface_hub.

Layout of google/fleurs: data/<config>/<split>.tsv (no header: id, file name, raw transcription,
normalised transcription, characters, sample count, gender) and data/<config>/audio/<split>.tar.gz
holding <split>/<file name>. Every file fetched is checked against the hash the repository states for
it at that revision (huggingface_hub names its cached blob after it): sha256 for LFS files such as the
archives, the git blob id for small ones such as the TSV.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from requant.common import fail, sha256_file

log = logging.getLogger("pipeline.fleurs")

CONFIGS = tuple(
    "af_za am_et ar_eg as_in ast_es az_az be_by bg_bg bn_in bs_ba ca_es ceb_ph ckb_iq cmn_hans_cn cs_cz cy_gb "
    "da_dk de_de el_gr en_us es_419 et_ee fa_ir ff_sn fi_fi fil_ph fr_fr ga_ie gl_es gu_in ha_ng he_il hi_in "
    "hr_hr hu_hu hy_am id_id ig_ng is_is it_it ja_jp jv_id ka_ge kam_ke kea_cv kk_kz km_kh kn_in ko_kr ky_kg "
    "lb_lu lg_ug ln_cd lo_la lt_lt luo_ke lv_lv mi_nz mk_mk ml_in mn_mn mr_in ms_my mt_mt my_mm nb_no ne_np "
    "nl_nl nso_za ny_mw oc_fr om_et or_in pa_in pl_pl ps_af pt_br ro_ro ru_ru sd_in sk_sk sl_si sn_zw so_so "
    "sr_rs sv_se sw_ke ta_in te_in tg_tj th_th tr_tr uk_ua umb_ao ur_pk uz_uz vi_vn wo_sn xh_za yo_ng "
    "yue_hant_hk zu_za".split()
)
# Parakeet TDT 0.6B v3's 25 European languages, as FLEURS configs (README: how to score them all)
PARAKEET_V3 = ("bg_bg", "cs_cz", "da_dk", "de_de", "el_gr", "en_us", "es_419", "et_ee", "fi_fi", "fr_fr", "hr_hr",
               "hu_hu", "it_it", "lt_lt", "lv_lv", "mt_mt", "nl_nl", "pl_pl", "pt_br", "ro_ro", "ru_ru", "sk_sk",
               "sl_si", "sv_se", "uk_ua")
_HEX = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


@dataclass(frozen=True)
class FleursRow:
    file: str  # member name inside the archive, under <split>/
    text: str  # FLEURS' normalised transcription


ALIASES = {"parakeet_v3": PARAKEET_V3}  # corpus.languages: [parakeet_v3] scores all of them


def expand_languages(languages: list[str]) -> list[str]:
    """corpus.languages with each alias replaced by its configs, in order, each once."""
    return list(dict.fromkeys(code for entry in languages for code in ALIASES.get(entry, (entry,))))


def check_languages(languages: list[str]) -> None:
    unknown = [code for code in languages if code not in CONFIGS]
    if unknown:
        fail(f"params.yaml: corpus.languages {unknown} are not FLEURS configs; valid ones: {' '.join(CONFIGS)} "
             f"(or {', '.join(ALIASES)} for all of that model's languages)")


def _git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    digest.update(path.read_bytes())
    return digest.hexdigest()


def verify_download(path: Path, label: str) -> str:
    """Check a cached file against the hash its blob is named after; return its sha256."""
    stated = Path(os.path.realpath(path)).name
    sha256 = sha256_file(path)
    if not _HEX.fullmatch(stated):
        fail(f"{label}: {path} is not in a Hugging Face cache layout, so its hash cannot be checked; "
             "clear HF_HUB_CACHE's google/fleurs folder and fetch again")
    actual = sha256 if len(stated) == 64 else _git_blob_id(path)
    if actual != stated:
        fail(f"{label}: {path} does not match the hash the repository states ({stated}); the download is "
             f"corrupt: delete {Path(os.path.realpath(path))} and run again")
    return sha256


def _download(repo: str, revision: str, filename: str) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo, filename, repo_type="dataset", revision=revision))
    except Exception as err:  # noqa: BLE001 - hub, HTTP and offline errors all end here
        fail(f"cannot fetch {filename} from the dataset {repo}@{revision} ({type(err).__name__}: "
             f"{str(err).splitlines()[0] if str(err) else ''}); check the network and corpus.fleurs_*")


def read_tsv(path: Path, label: str) -> list[FleursRow]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        cells = line.split("\t")
        if len(cells) < 7 or not cells[1].endswith(".wav"):
            fail(f"{label} line {number}: expected FLEURS' 7 tab-separated columns; is this the FLEURS repo?")
        rows.append(FleursRow(cells[1], cells[3].strip()))
    return rows


def fetch_language(repo: str, revision: str, split: str, config: str, cap: int, dest: Path) -> tuple[list[FleursRow],
                                                                                                   dict[str, str]]:
    """The first `cap` rows (0: all) of one config's split, their audio extracted into dest.

    Returns the rows and the sha256 of each file fetched (for provenance).
    """
    tsv_name, tar_name = f"data/{config}/{split}.tsv", f"data/{config}/audio/{split}.tar.gz"
    tsv = _download(repo, revision, tsv_name)
    hashes = {tsv_name: verify_download(tsv, f"{repo} {tsv_name}")}
    rows = read_tsv(tsv, f"{repo} {tsv_name}")
    rows = rows[:cap] if cap else rows
    archive = _download(repo, revision, tar_name)
    hashes[tar_name] = verify_download(archive, f"{repo} {tar_name}")
    wanted = {f"{split}/{row.file}" for row in rows}
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    (dest / Path(member.name).name).write_bytes(tar.extractfile(member).read())
                    wanted.discard(member.name)
                    if not wanted:
                        break
    except (tarfile.TarError, OSError, EOFError) as err:
        fail(f"{repo} {tar_name}: cannot be read as a tar.gz archive ({err})")
    if wanted:
        fail(f"{repo} {tar_name}: lacks {len(wanted)} file(s) its TSV lists, e.g. {sorted(wanted)[0]}")
    log.info("FLEURS %s/%s: %d utterances", config, split, len(rows))
    return rows, hashes
