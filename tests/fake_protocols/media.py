"""Images and audio: ``POST /v1/images/generations``, ``POST /v1/audio/transcriptions``
(and ``/v1/audio/translations``), ``POST /v1/audio/speech``; ``GET /_files/img/<hex>.png``
serves the images handed out as URLs."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import time
import zlib

from .common import abort_now

SPEECH_RATE = 24000          # Hz, mono, 16-bit PCM (what OpenAI's wav/pcm use)
SPEECH_SAMPLES_PER_CHAR = 240  # 10 ms of audio per input character
FALLBACK_BYTES_PER_SECOND = 16000


def png_bytes(seed: bytes) -> bytes:
    """A valid 2x2 RGB PNG whose colours derive from blake2b(seed)."""
    h = hashlib.blake2b(seed, digest_size=12).digest()
    rows = b"".join(b"\x00" + h[6 * r:6 * r + 6] for r in range(2))

    def chunk(t, data):
        return struct.pack(">I", len(data)) + t + data + struct.pack(
            ">I", zlib.crc32(t + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def wav_bytes(n_samples: int, rate: int = SPEECH_RATE) -> bytes:
    """A valid mono 16-bit PCM WAV of n_samples of silence."""
    data = b"\x00\x00" * n_samples
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", len(data)) + data)


def audio_duration(raw: bytes) -> float:
    """Seconds: for a RIFF/WAVE file, data-chunk bytes / byte rate (from the fmt
    chunk); for anything else len(bytes) / 16000."""
    if len(raw) >= 12 and raw[:4] == b"RIFF" and raw[8:12] == b"WAVE":
        pos, byte_rate, data_len = 12, None, None
        while pos + 8 <= len(raw):
            cid = raw[pos:pos + 4]
            size = struct.unpack("<I", raw[pos + 4:pos + 8])[0]
            if cid == b"fmt " and size >= 12:
                byte_rate = struct.unpack("<I", raw[pos + 16:pos + 20])[0]
            elif cid == b"data":
                data_len = min(size, len(raw) - pos - 8)
                break
            pos += 8 + size + (size & 1)
        if byte_rate and data_len is not None:
            return data_len / byte_rate
    return len(raw) / FALLBACK_BYTES_PER_SECOND


_SPEECH_CT = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac",
              "flac": "audio/flac", "wav": "audio/wav", "pcm": "audio/pcm"}
_MAGIC = {"mp3": b"ID3\x04\x00\x00\x00\x00\x00\x00", "opus": b"OggS\x00\x02",
          "aac": b"\xff\xf1\x50\x80", "flac": b"fLaC"}


def speech_bytes(text: str, fmt: str) -> bytes:
    """wav: a real WAV of 10 ms silence per input character at 24 kHz; pcm: the
    same samples raw; mp3/opus/aac/flac: the format's magic bytes then 48 zero
    bytes per character (not decodable audio)."""
    n = len(text) * SPEECH_SAMPLES_PER_CHAR
    if fmt == "wav":
        return wav_bytes(n)
    if fmt == "pcm":
        return b"\x00\x00" * n
    return _MAGIC[fmt] + b"\x00" * (48 * len(text))


def _fmt_ts(t: float, sep: str) -> str:
    ms = round(t * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def register(app, ctx):
    web = ctx.web

    async def images(request):
        body, ok = await ctx.read_json(request)
        ctx.record(request, body)
        if not ok or not isinstance(body, dict):
            return ctx.err(400, message="We could not parse the JSON body of your request.")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return ctx.err(400, message="Missing required parameter: 'prompt'.", param="prompt")
        model = body.get("model") or "dall-e-2"
        n = body.get("n") or 1
        if not isinstance(n, int) or not 1 <= n <= 10:
            return ctx.err(400, message="Invalid 'n': must be between 1 and 10.", param="n")
        rf = body.get("response_format")
        if rf is None:
            rf = "b64_json" if str(model).startswith("gpt-image") else "url"
        if rf not in ("url", "b64_json"):
            return ctx.err(400, message="Invalid 'response_format'.", param="response_format")
        d = ctx.parse_model(model)
        r = await ctx.common_gate(request, body, d, False)
        if r is not None:
            return r
        if d["drop"] is not None:
            abort_now(request)
        data = []
        for i in range(n):
            seed = f"{prompt}\x00{i}".encode()
            if rf == "b64_json":
                data.append({"b64_json": base64.b64encode(png_bytes(seed)).decode(),
                             "revised_prompt": prompt})
            else:
                data.append({"url": f"http://{request.host}/_files/img/{seed.hex()}.png",
                             "revised_prompt": prompt})
        obj = {"created": int(time.time()), "data": data}
        if not d["nousage"]:
            it = len(prompt.split())
            ot = d["chunks"] * n
            obj["usage"] = {"input_tokens": it, "input_tokens_details": {
                "text_tokens": it, "image_tokens": 0}, "output_tokens": ot,
                "total_tokens": it + ot}
        return web.Response(body=ctx.dumps_for(d)(obj), content_type="application/json")

    async def image_file(request):
        try:
            seed = bytes.fromhex(request.match_info["hex"])
        except ValueError:
            return web.Response(status=404)
        return web.Response(body=png_bytes(seed), content_type="image/png")

    async def transcriptions(request):
        task = "translate" if request.path.endswith("translations") else "transcribe"
        try:
            form = await request.post()
        except Exception:
            form = None
        rec, raw = {}, None
        if form is not None:
            for k, v in form.items():
                if hasattr(v, "file"):
                    raw = v.file.read()
                    rec[k] = {"filename": v.filename, "content_type": v.content_type,
                              "size": len(raw)}
                elif k.endswith("[]"):
                    rec[k] = form.getall(k)
                else:
                    rec.setdefault(k, v)
        ctx.record(request, rec)
        model = rec.get("model")
        if not isinstance(model, str) or not model:
            return ctx.err(400, message="you must provide a model parameter", param="model")
        if raw is None:
            return ctx.err(400, message="Missing required parameter: 'file'.", param="file")
        d = ctx.parse_model(model)
        r = await ctx.common_gate(request, rec, d, False)
        if r is not None:
            return r
        if d["drop"] is not None:
            abort_now(request)
        dur = audio_duration(raw)
        text = ctx.pieces(d["chunks"], False)[1].strip()
        fmt = rec.get("response_format") or "json"
        usage = None if d["nousage"] else {"type": "duration", "seconds": math.ceil(dur)}
        dumps = ctx.dumps_for(d)
        if fmt == "text":
            return web.Response(text=text + "\n", content_type="text/plain")
        if fmt in ("srt", "vtt"):
            if fmt == "srt":
                out = "1\n{} --> {}\n{}\n\n".format(_fmt_ts(0, ","), _fmt_ts(dur, ","), text)
            else:
                out = "WEBVTT\n\n{} --> {}\n{}\n\n".format(_fmt_ts(0, "."), _fmt_ts(dur, "."), text)
            return web.Response(text=out, content_type="text/plain")
        if fmt == "verbose_json":
            words = text.split()
            obj = {"task": task, "language": "english", "duration": dur, "text": text,
                   "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": dur, "text": text,
                                 "tokens": list(range(len(words))), "temperature": 0.0,
                                 "avg_logprob": -0.1, "compression_ratio": 1.0,
                                 "no_speech_prob": 0.0}]}
            if "word" in (rec.get("timestamp_granularities[]") or []):
                step = dur / max(len(words), 1)
                obj["words"] = [{"word": w, "start": i * step, "end": (i + 1) * step}
                                for i, w in enumerate(words)]
        elif fmt == "json":
            obj = {"text": text}
        else:
            return ctx.err(400, message="Invalid 'response_format'.", param="response_format")
        if usage is not None:
            obj["usage"] = usage
        return web.Response(body=dumps(obj), content_type="application/json")

    async def speech(request):
        body, ok = await ctx.read_json(request)
        ctx.record(request, body)
        if not ok or not isinstance(body, dict):
            return ctx.err(400, message="We could not parse the JSON body of your request.")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return ctx.err(400, message="you must provide a model parameter", param="model")
        inp = body.get("input")
        if not isinstance(inp, str) or not inp:
            return ctx.err(400, message="Missing required parameter: 'input'.", param="input")
        if not body.get("voice"):
            return ctx.err(400, message="Missing required parameter: 'voice'.", param="voice")
        fmt = body.get("response_format") or "mp3"
        if fmt not in _SPEECH_CT:
            return ctx.err(400, message="Invalid 'response_format'.", param="response_format")
        d = ctx.parse_model(model)
        r = await ctx.common_gate(request, body, d, False)
        if r is not None:
            return r
        if d["drop"] is not None:
            abort_now(request)
        return web.Response(body=speech_bytes(inp, fmt), headers={"Content-Type": _SPEECH_CT[fmt]})

    app.router.add_post("/v1/images/generations", images)
    app.router.add_get("/_files/img/{hex}.png", image_file)
    app.router.add_post("/v1/audio/transcriptions", transcriptions)
    app.router.add_post("/v1/audio/translations", transcriptions)
    app.router.add_post("/v1/audio/speech", speech)
