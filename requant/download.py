"""Download one crop of a YouTube video or http(s) file with yt-dlp, with retries and a duration check."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import imageio_ffmpeg
from yt_dlp import YoutubeDL
from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
from yt_dlp.utils import DownloadError, download_range_func

from requant.audio import decode_audio
from requant.common import StageError, child_process, fail
from requant.params import FetchParams

log = logging.getLogger("pipeline.download")
ROOT = Path(__file__).resolve().parents[1]
YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
# yt-dlp errors that another attempt cannot fix
PERMANENT = re.compile(
    r"HTTP Error (400|401|403|404|410)|unavailable|Private video|Unsupported URL|not a valid URL|"
    r"Incomplete YouTube ID|removed|terminated|copyright",
    re.IGNORECASE,
)


def source_url(source: str, label: str) -> str | None:
    """The URL for `youtube:<id>` or http(s) sources; None for anything else (a local path)."""
    if source.startswith("youtube:"):
        video_id = source.removeprefix("youtube:")
        if not YOUTUBE_ID.fullmatch(video_id):
            fail(f"{label}: '{source}' is not a YouTube id (11 characters of A-Z a-z 0-9 _ -); fix params.yaml")
        return f"https://www.youtube.com/watch?v={video_id}"
    if source.startswith(("http://", "https://")):
        return source
    return None


class _QuietLogger:
    """Routes yt-dlp's console output into our log (its errors come back as exceptions)."""

    def debug(self, msg: str) -> None:
        log.debug(msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.debug("yt-dlp warning: %s", msg)

    def error(self, msg: str) -> None:
        log.debug("yt-dlp error: %s", msg)


def _options(dest: Path, start_s: float, crop_s: float, fetch: FetchParams) -> dict:
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    # yt-dlp's "is ffmpeg available" check for download_ranges reads this context variable, which
    # only its command-line entry point sets; the ffmpeg_location option alone is not enough.
    FFmpegPostProcessor._ffmpeg_location.set(ffmpeg)
    options = {
        "format": "bestaudio/best",
        "outtmpl": str(dest / "download.%(ext)s"),
        # only [start, start + crop) is fetched (ffmpeg seeks with HTTP range requests)
        "download_ranges": download_range_func(None, [(start_s, start_s + crop_s)]),
        "ffmpeg_location": ffmpeg,
        # twice the watchdog's stall bound, so that a stall is always the watchdog's to report (_attempt)
        "socket_timeout": 2 * fetch.timeout_s,
        # ffmpeg reads ahead instead of seeking when the crop starts within its "short seek" threshold,
        # which defaults to the TCP receive buffer: it varies with the kernel's autotuning, so the same
        # crop sometimes fetched the whole file. A threshold of 1 byte makes it seek every time. rw_timeout
        # ends ffmpeg on a dead socket even if our watchdog (_attempt) were gone.
        "external_downloader_args": {"ffmpeg_i": ["-short_seek_size", "1",
                                                  "-rw_timeout", str(int(2 * fetch.timeout_s * 1e6))]},
        "retries": 0,  # the retry loop below owns retries and backoff
        "noplaylist": True,
        "overwrites": True,
        "cachedir": False,
        "logger": _QuietLogger(),
        "noprogress": True,
        "quiet": True,  # also silences ffmpeg (-loglevel quiet); failures are caught by the decode check
    }
    try:  # YouTube needs a JavaScript runtime: the PyPI `deno` package provides one
        import deno

        options["js_runtimes"] = {"deno": {"path": deno.find_deno_bin()}}
    except (ImportError, FileNotFoundError, RuntimeError):
        pass
    return options


def _one_line(err: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines()[0] if str(err).strip() else repr(err)
    return text.removeprefix("ERROR: ")


def download_crop(url: str, dest: Path, start_s: float, crop_s: float, fetch: FetchParams, label: str) -> Path:
    """Download [start_s, start_s + crop_s) of `url` into dest/download.<ext> (dest exists); return the path.

    Each attempt runs in a child process group (yt-dlp and the ffmpeg it hands the crop to) that a
    watchdog kills on a stall or a trickle, or after fetch.attempt_timeout_s of wall clock, and is
    checked by decoding it: a truncated or broken file counts as a failed attempt. Transient failures
    are retried `fetch.retries` times with exponential backoff, a stall once; permanent ones (unknown
    id, HTTP 404, ...), a trickle and a source known to be shorter than the crop fail at once.
    """
    problem, stalls = "", 0
    for attempt in range(fetch.retries + 1):
        if attempt:
            delay = fetch.backoff_s * 2 ** (attempt - 1)
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", label, attempt, problem, delay)
            time.sleep(delay)
        for stale in dest.glob("download.*"):
            stale.unlink()
        result = _attempt(url, dest, start_s, crop_s, fetch)
        if "error" in result:
            problem = result["error"]
            if PERMANENT.search(problem):
                fail(f"{label}: cannot download {url}: {problem}; check the id/URL in params.yaml")
            # a stall may be a dead connection, so it gets one fresh try; a trickle over a whole
            # window, or an attempt that ran out of wall clock, would only repeat itself
            stalls += "stalled" in problem
            if result.get("slow") and ("stalled" not in problem or stalls > 1):
                fail(f"{label}: could not download {url} after {attempt + 1} attempts ({problem}); check the network "
                     "or the source, then re-run")
            continue
        duration = result.get("duration")
        if duration and duration < start_s + crop_s - 0.5:
            fail(f"{label}: {url} lasts {duration:.1f} s, shorter than the crop [{start_s}, {start_s + crop_s}) s; "
                 "reduce crop_s/start_s in params.yaml")
        files = sorted(p for p in dest.iterdir() if p.name.startswith("download.") and not p.name.endswith(".part"))
        if len(files) != 1:
            problem = f"yt-dlp left {len(files)} files"
            continue
        try:
            decode_audio(files[0], start_s=0.0, duration_s=crop_s)
        except StageError as err:
            problem = f"the downloaded file is truncated or broken ({str(err).removeprefix(f'{files[0]}: ')})"
            continue
        return files[0]
    fail(f"{label}: could not download {url} after {fetch.retries + 1} attempts ({problem}); check the network "
         "and that the source covers the crop, then re-run")


def _progress(group: int, dest: Path, seen: dict[int, int]) -> int:
    """A count that grows while an attempt makes progress: the bytes written into dest (ffmpeg's output
    grows with what it receives) plus the file and pipe bytes the group's processes have read (rchar,
    remembered after a process exits: yt-dlp and its JavaScript runtime at work before ffmpeg starts).
    Socket reads are not in rchar, so a stalled or trickling server shows as little or no growth."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            rchar = re.search(r"^rchar: (\d+)", (entry / "io").read_text(), re.MULTILINE)
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if rchar:
            seen[int(entry.name)] = max(seen.get(int(entry.name), 0), int(rchar[1]))
    written = 0
    for path in dest.iterdir():
        with contextlib.suppress(OSError):
            written += path.stat().st_size
    return written + sum(seen.values())


def _too_slow(history: list[tuple[float, int]], fetch: FetchParams) -> str | None:
    """Why the attempt should end now, from (time, bytes read) samples: a stall or a trickle, else None."""
    now, total = history[-1]
    idle = [t for t, b in history if b == total]
    if now - idle[0] >= fetch.timeout_s:
        return f"the server stalled: no progress for fetch.timeout_s={fetch.timeout_s:g} s"  # "stalled": retried once
    if now - history[0][0] >= fetch.rate_window_s:
        start = next(b for t, b in reversed(history) if now - t >= fetch.rate_window_s)
        rate = (total - start) / 1e3 / fetch.rate_window_s
        if rate < fetch.min_rate_kb_s:
            return (f"the server trickles: {rate:.2f} kB/s over the last {fetch.rate_window_s:g} s, below "
                    f"fetch.min_rate_kb_s={fetch.min_rate_kb_s:g}")
    return None


def _attempt(url: str, dest: Path, start_s: float, crop_s: float, fetch: FetchParams) -> dict:
    """One yt-dlp run in a child process group: {"duration": s} or {"error": one line, "slow": bool}.

    A watchdog samples its progress once a second and ends the attempt on a stall (no progress for
    fetch.timeout_s) or a trickle (below fetch.min_rate_kb_s over fetch.rate_window_s);
    fetch.attempt_timeout_s stays the last-resort bound on the whole attempt."""
    job = {"url": url, "dest": str(dest), "start_s": start_s, "crop_s": crop_s, "socket_timeout": fetch.timeout_s}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with child_process([sys.executable, "-m", "requant.download", json.dumps(job)], env=env) as proc:
        started, seen, history = time.monotonic(), {}, []
        while True:
            try:
                out, err = proc.communicate(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if now - started >= fetch.attempt_timeout_s:
                return {"error": f"no complete download within fetch.attempt_timeout_s={fetch.attempt_timeout_s:g} s",
                        "slow": True}
            history.append((now, _progress(proc.pid, dest, seen)))
            history = [h for h in history if now - h[0] <= max(fetch.timeout_s, fetch.rate_window_s) + 2]
            reason = _too_slow(history, fetch)
            if reason:
                return {"error": reason, "slow": True}
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit status {proc.returncode}"
        return {"error": f"the download process failed ({last})"}
    return json.loads(lines[-1])


def _download(job: dict) -> dict:
    """The child's side of _attempt: yt-dlp with the crop, in this process."""
    fetch = FetchParams(retries=0, backoff_s=0.0, timeout_s=job["socket_timeout"], local_dir="", min_rate_kb_s=0.0,
                        rate_window_s=0.0)
    try:
        with YoutubeDL(_options(Path(job["dest"]), job["start_s"], job["crop_s"], fetch)) as ydl:
            info = ydl.extract_info(job["url"], download=True)
    except DownloadError as err:
        return {"error": _one_line(err)}
    return {"duration": (info or {}).get("duration")}


if __name__ == "__main__":
    print(json.dumps(_download(json.loads(sys.argv[1]))))
