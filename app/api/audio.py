"""POST /v1/audio/transcriptions (multipart) and POST /v1/audio/speech."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from app.api.deps import call_response, caller, current_principal, get_app_state, json_body
from app.api.schemas.audio import parse_speech, parse_transcription
from app.errors import ClientClosed, InvalidRequest

router = APIRouter()


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    """Speech to text from a multipart upload, billed on the duration the provider reports."""
    state = get_app_state(request)
    principal = await current_principal(request, state)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("The request must be multipart/form-data with the audio in 'file'.")
    fields: dict[str, list[str]] = {}
    file: tuple[str, bytes, str] | None = None
    try:
        async with request.form() as form:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key != "file":
                        raise InvalidRequest(f"Unrecognized request argument supplied: '{key}'.", param=key)
                    file = (value.filename or "audio", await value.read(), value.content_type or "")
                else:
                    fields.setdefault(key, []).append(value)
    except ClientDisconnect as exc:
        raise ClientClosed("The client closed the connection before sending its request.") from exc
    except InvalidRequest:
        raise
    except Exception as exc:  # malformed multipart: python-multipart's and Starlette's errors
        raise InvalidRequest(f"The multipart body could not be read: {exc}") from exc
    model = fields.get("model", [None])[-1]
    req = parse_transcription(fields, file, extra=state.llm.extra_params(model))
    return call_response(await state.calls.run(req, caller(request, principal)))


@router.post("/v1/audio/speech")
async def speech(request: Request) -> Response:
    """Text to speech: the audio bytes, billed per input character (X-Request-Cost)."""
    state = get_app_state(request)
    body = await json_body(request)
    principal = await current_principal(request, state)
    req = parse_speech(body, extra=state.llm.extra_params(body.get("model")))
    return call_response(await state.calls.run(req, caller(request, principal)))
