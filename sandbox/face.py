"""Simulated face-check provider (人脸核身): the caller sends a name, an ID number and a photo taken by the app;
the provider answers with one score in [0, 1] for liveness plus match against the registry photo.

POST /face/verify {name, id_number, image (base64)} -> {score}
The score is deterministic so tests can steer it: an image whose bytes start with b"SPOOF" scores 0.1 (a
printed photo held up to the camera), any other image 0.97. Nothing personal (nor the image) is logged.
"""

from __future__ import annotations

import base64
import binascii

import msgspec
import structlog
from litestar import Litestar, post
from litestar.params import JSONBody

from sandbox.frame import FAULTY, Provider, ProviderError, provider_app

log = structlog.get_logger(__name__)

SPOOF_PREFIX = b"SPOOF"
SPOOF_SCORE = 0.1
LIVE_SCORE = 0.97
MAX_IMAGE_BYTES = 5 * 1024 * 1024


class VerifyIn(msgspec.Struct):
    name: str
    id_number: str
    image: str


class VerifyOut(msgspec.Struct):
    score: float


def score_image(image: bytes) -> float:
    return SPOOF_SCORE if image.startswith(SPOOF_PREFIX) else LIVE_SCORE


@post("/face/verify", status_code=200, opt=FAULTY, sync_to_thread=False)
def verify(data: JSONBody[VerifyIn]) -> VerifyOut:
    if not data.name.strip() or not data.id_number.strip():
        raise ProviderError(400, "isv.INVALID_PARAMETERS", "name and id_number are required")
    try:
        image = base64.b64decode(data.image, validate=True)
    except (binascii.Error, ValueError):
        raise ProviderError(400, "isv.INVALID_PARAMETERS", "image: not base64") from None
    if not image:
        raise ProviderError(400, "isv.INVALID_PARAMETERS", "image: empty")
    if len(image) > MAX_IMAGE_BYTES:
        raise ProviderError(400, "isv.INVALID_PARAMETERS", f"image: larger than {MAX_IMAGE_BYTES} bytes")
    score = score_image(image)
    log.info("face.verified", score=score, image_bytes=len(image))
    return VerifyOut(score=score)


def create_app() -> Litestar:
    return provider_app("face", [verify])


PROVIDER = Provider(
    name="face",
    title="Face check",
    create_app=create_app,
    port_setting="sandbox_face_port",
    url_setting="face_check_url",
)
