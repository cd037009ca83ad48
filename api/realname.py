"""Real-name verification (L2 name + ID number, L3 face) and the caller's own account."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, get, post
from litestar.params import JSONBody

from api.deps import StoresDep
from api.guards import citizen, citizen_level, claims_of
from api.rights import delete_me
from auth import realname
from auth.models import Me
from auth.realname import FaceRequest, LevelUp, RealNameRequest


@post("/me/real-name", guards=[citizen], status_code=200, summary="Verify the real name (level L2)")
async def verify_real_name(
    request: Request[Any, Any, Any], data: JSONBody[RealNameRequest], stores: StoresDep
) -> LevelUp:
    """Matches name + ID number (GB 11643) with the population registry and raises the account to L2.
    Answers a new access token for the current session (acr L2, amr gains "idcard"); the refresh token keeps
    working and its next access token is L2 too. 422 invalid_id_number / invalid_name / real_name_mismatch;
    409 id_number_taken (one ID number, one account) or already_verified; 429 after 5 attempts an hour;
    503 provider_unavailable when the registry cannot be reached."""
    return await realname.verify_real_name(stores, claims_of(request), data)


@post("/me/face", guards=[citizen_level(2)], status_code=200, summary="Face check (level L3)")
async def verify_face(
    request: Request[Any, Any, Any], data: JSONBody[FaceRequest], stores: StoresDep
) -> LevelUp:
    """Sends the photo (base64, at most 2 MB decoded) with the verified identity to the face-check provider;
    a score at or above the threshold raises the account to L3 (amr gains "face"). Requires L2 (403).
    422 face_mismatch / image_too_large / invalid_image; 503 provider_unavailable."""
    return await realname.verify_face(stores, claims_of(request), data)


@get("/me", guards=[citizen], summary="The caller's account (personal data masked)")
async def my_account(request: Request[Any, Any, Any], stores: StoresDep) -> Me:
    return await realname.me(stores, claims_of(request))


# DELETE /v1/me (api/rights.py) is mounted here too: Litestar refuses one path in two routers.
router = Router(
    path="/v1", route_handlers=[verify_real_name, verify_face, my_account, delete_me], tags=["me"]
)
