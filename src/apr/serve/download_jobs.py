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
    # The pull's current stage (download, assemble, verify, hash) and its bytes done / total (None: unknown).
    stage: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None

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

    def _progress(self, job_id: str, stage: str, done: int, total: int | None) -> None:
        with self._lock:
            job = self._jobs[job_id]
            self._jobs[job_id] = replace(job, stage=stage, bytes_done=done, bytes_total=total)

    def _finish(self, job_id: str, **outcome: Any) -> None:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], finished=time.time(), **outcome)

    def _run(self, job: DownloadJob) -> None:
        from apr.errors import AprError
        from apr.hub import Hub
        from apr.hub.progress import observing

        self._put(replace(job, status="running"))
        try:
            with observing(lambda stage, done, total: self._progress(job.id, stage, done, total)):
                cached = Hub.from_env().pull(job.model, progress=False)
        except (AprError, OSError) as exc:  # a failed pull is the job's outcome, reported on its record
            self._finish(job.id, status="failed", error=str(exc))
            return
        self._finish(job.id, status="succeeded", result=cached.to_json())
