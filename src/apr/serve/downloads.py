"""POST /models/download: pull a model into the apr cache in the background; poll the job for its state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from apr.serve.protocol_extra import DownloadRequest
from apr.serve.route_meta import ERROR_RESPONSES
from apr.serve.state import ServeState, check_api_key, serve_state

router = APIRouter(dependencies=[Depends(check_api_key)])


@router.post("/models/download", status_code=202, responses=ERROR_RESPONSES)
async def start_download(body: DownloadRequest, state: ServeState = Depends(serve_state)) -> dict[str, Any]:
    """Start pulling `model` (a ref, hf://…, or a path) into the apr cache; poll GET /models/download/{id}."""
    return state.downloads.start(body.model).to_json()


@router.get("/models/download/{job_id}", responses=ERROR_RESPONSES)
async def download_status(job_id: str, state: ServeState = Depends(serve_state)) -> dict[str, Any]:
    return state.downloads.get(job_id).to_json()


@router.get("/models/download", responses=ERROR_RESPONSES)
async def list_downloads(state: ServeState = Depends(serve_state)) -> dict[str, Any]:
    return {"object": "list", "data": [job.to_json() for job in state.downloads.all()]}
