"""Download jobs of `apr serve`: pull a model into the apr cache on a background thread, keep its state."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from apr.serve.errors import ApiError, bad_request

Status = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True)
class DownloadJob:
    id: str
    model: str
    status: Status
    created: float
    finished: float | None = None
    error: str | None = None
    # The cache entry once pulled: ref, path, format, size_bytes, sha256, source, pulled_at.
    result: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"object": "model.download", **asdict(self)}


class Downloads:
    """The server's download jobs. Each job runs `Hub.pull` on its own thread and replaces its record whole,
    so readers on the event loop always see a consistent snapshot."""

    def __init__(self) -> None:
        self._jobs: dict[str, DownloadJob] = {}
        self._lock = threading.Lock()

    def start(self, model: str) -> DownloadJob:
        from apr.errors import AprError
        from apr.hub.catalog import load_catalog
        from apr.hub.refs import LocalRef, parse_ref

        try:
            ref = parse_ref(model, load_catalog())  # a ref that names nothing is the client's 400, not a failed job
        except AprError as exc:
            raise bad_request(str(exc), param="model", code="invalid_model_ref") from exc
        if isinstance(ref, LocalRef):
            # Registering a path would have the server read (and report the hash of) any file a client names.
            raise bad_request(
                f"'{model}' is a path on the server, not a model ref; downloads take a ref such as "
                "qwen2.5-coder:1.5b or hf://ORG/REPO (serve a local file with `apr serve PATH`).",
                param="model",
                code="invalid_model_ref",
            )
        job = DownloadJob(id=f"dl-{uuid.uuid4().hex[:16]}", model=model, status="queued", created=time.time())
        self._put(job)
        threading.Thread(target=self._run, args=(job,), name=f"apr-download-{job.id}", daemon=True).start()
        return job

    def get(self, job_id: str) -> DownloadJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"No download job '{job_id}'.", param="id", code="not_found")
        return job

    def all(self) -> list[DownloadJob]:
        return sorted(self._jobs.values(), key=lambda job: job.created)

    def _put(self, job: DownloadJob) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def _run(self, job: DownloadJob) -> None:
        from apr.errors import AprError
        from apr.hub import Hub

        self._put(replace(job, status="running"))
        try:
            cached = Hub.from_env().pull(job.model, progress=False)
        except (AprError, OSError) as exc:  # a failed pull is the job's outcome, reported on its record
            self._put(replace(job, status="failed", finished=time.time(), error=str(exc)))
            return
        self._put(replace(job, status="succeeded", finished=time.time(), result=cached.to_json()))
