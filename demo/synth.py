"""Synthesized speech for the demo preset: espeak-ng (PyPI espeakng-loader, via ctypes) -> 16 kHz.

`synthesize(text, voice)` speaks one sentence; `make_speech(lang, voice, duration_s, seed)` fills an
exact duration with generated sentences (demo/text.py) and returns the audio with its true transcript.

Voices are "<language>[+<variant>]" (e.g. "en-us+m3", "fr+f2", "en-gb", "fr-be"). Voice policy:
the variants +m3 and +f2 are HELD OUT from model training (they voice the model's test sets and the
evaluation clip); training uses the other variants, so the evaluation measures a voice the model has
not heard.

espeak-ng keeps global state that carries from one utterance into the next (its wave generator's
phase and noise state survive even espeak_Terminate), so the same text would come out slightly
different on every call. Each utterance is therefore spoken in a short-lived forked child of a
process whose engine is initialised but has never spoken: every call starts from the same state, the
same arguments give the same samples in any process or thread, and nothing is shared between calls.
"""

from __future__ import annotations

import ctypes
import os
import random
import threading
from pathlib import Path

import espeakng_loader
import numpy as np
import soxr

from demo.text import sentences

SAMPLE_RATE = 16_000
HELD_OUT_VARIANTS = ("m3", "f2")
_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
_RATE, _PITCH = 1, 3  # espeak_PARAMETER ids
_CHARS_UTF8, _POS_CHARACTER = 1, 1
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


class _Engine:
    """One initialised espeak-ng per process."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self.rate = lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise (espeakng-loader data missing?)")
        self.lib = lib
        self.chunks: list[np.ndarray] = []
        self.callback = _CALLBACK(self._collect)  # keep a reference: the C side holds only the pointer
        lib.espeak_SetSynthCallback(self.callback)
        self.identifiers = self._identifiers()

    def _collect(self, wav, count, _events) -> int:
        if count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def _identifiers(self) -> dict[str, str]:
        """language code or file name (lowercase) -> voice identifier, e.g. 'en-gb' -> 'gmw/en'."""
        found: dict[str, str] = {}
        voices = self.lib.espeak_ListVoices(None)
        i = 0
        while voices[i]:
            voice = voices[i].contents
            identifier = voice.identifier.decode()
            found.setdefault(identifier.rsplit("/", 1)[-1].lower(), identifier)
            # languages: [priority byte, code, NUL]... ended by a zero priority byte
            addr = voice.languages
            while ctypes.c_ubyte.from_address(addr).value:
                code = ctypes.string_at(addr + 1).decode()
                found.setdefault(code.lower(), identifier)
                addr += len(code) + 2
            i += 1
        return found

    def check_voice(self, voice: str) -> str:
        """The espeak-ng name for "<language>[+<variant>]"; ValueError if either part is unknown."""
        language, _, variant = voice.partition("+")
        identifier = self.identifiers.get(language.lower())
        if identifier is None:
            raise ValueError(f"espeak-ng has no voice for language '{language}' (voice '{voice}')")
        if variant and not (Path(espeakng_loader.get_data_path()) / "voices" / "!v" / variant).is_file():
            raise ValueError(f"espeak-ng has no voice variant '{variant}' (voice '{voice}')")
        return identifier + (f"+{variant}" if variant else "")

    def speak(self, text: str, name: str, rate_wpm: int, pitch: int) -> np.ndarray:
        """int16 samples at self.rate. Changes the engine's state: call only in a throwaway child."""
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise RuntimeError(f"espeak-ng cannot set voice '{name}'")
        self.lib.espeak_SetParameter(_RATE, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self.chunks = []
        data = text.encode()
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        if status != 0:
            raise RuntimeError(f"espeak-ng synthesis failed (status {status}) for {text!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


_lock = threading.Lock()
_engine: tuple[int, _Engine] | None = None


def _get_engine() -> _Engine:
    """This process's pristine engine (initialised, never spoken)."""
    global _engine
    with _lock:
        if _engine is None or _engine[0] != os.getpid():
            _engine = (os.getpid(), _Engine())
        return _engine[1]


def _speak_in_child(engine: _Engine, text: str, name: str, rate_wpm: int, pitch: int) -> np.ndarray:
    """Run engine.speak in a forked child so the parent's engine never leaves its initial state."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: speak, send b"\0" + samples or b"\1" + error, and leave without cleanup
        os.close(read_end)
        try:
            # voices with breath noise (e.g. fr+f3) draw random numbers: seed espeak-ng's generator
            engine.lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
            reply = b"\0" + engine.speak(text, name, rate_wpm, pitch).tobytes()
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            reply = b"\1" + str(err).encode()
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(reply)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        reply = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not reply:
        raise RuntimeError(f"espeak-ng child process failed (wait status {status}) for {text!r}")
    if reply[:1] != b"\0":
        raise RuntimeError(reply[1:].decode(errors="replace"))
    return np.frombuffer(reply[1:], dtype=np.int16)


def synthesize(text: str, voice: str, rate_wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """Speak `text` with an espeak-ng voice; 16 kHz mono float32 in [-1, 1], deterministic."""
    engine = _get_engine()
    pcm = _speak_in_child(engine, text, engine.check_voice(voice), rate_wpm, pitch)
    audio = pcm.astype(np.float32) / 32768.0
    return soxr.resample(audio, engine.rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


def make_speech(
    lang: str, voice: str, duration_s: float, seed: int, text_seed_offset: int = 0, rate: float = 1.0,
    switch_every: int = 3,
) -> tuple[np.ndarray, str]:
    """Exactly round(duration_s * 16000) samples of generated sentences, and their transcript.

    Speaking rate (140-190 wpm, times `rate`), pitch (50 +- 8) and the pauses (0.2-0.8 s) between
    sentences are drawn from `seed`; the text from `seed + text_seed_offset`. Several comma-separated
    languages and voices ("en,fr", "en-gb+f2,fr+m3") take turns every `switch_every` sentences. A
    sentence that does not fit fully in what is left is skipped (a later, shorter one may fit), and the
    end is padded with silence.
    """
    langs, voices = lang.split(","), voice.split(",")
    total = round(duration_s * SAMPLE_RATE)
    rng = random.Random(f"speech:{lang}:{voice}:{seed}")
    # each sentence plus its pause lasts well over a second, so this many always suffice
    count = int(duration_s) + 8
    texts = [sentences(code, count, seed + text_seed_offset + i) for i, code in enumerate(langs)]
    turns = [(texts[(i // switch_every) % len(langs)][i], voices[(i // switch_every) % len(langs)])
             for i in range(count)]
    audio = np.zeros(total, dtype=np.float32)
    spoken: list[str] = []
    pos = round(rng.uniform(0.2, 0.8) * SAMPLE_RATE)
    for text, speaker in turns:
        clip = synthesize(text, speaker, rate_wpm=round(rng.randint(140, 190) * rate), pitch=50 + rng.randint(-8, 8))
        if pos + len(clip) > total:
            continue
        audio[pos : pos + len(clip)] = clip
        spoken.append(text)
        pos += len(clip) + round(rng.uniform(0.2, 0.8) * SAMPLE_RATE)
    return audio, " ".join(spoken)
