#!/usr/bin/env python3
"""A test peer of production NDIF (ndif 0.1 server, nnsight 0.8.1 client; the "G4" protocol).

It speaks NDIF's HTTP API for non-blocking requests and runs every job through nnsight's own
server-side path, on real (tiny) models loaded in the serving dtype:

    model._remoteable_set_env(env)
    tracer = RequestModel.deserialize(blob, model._remoteable_persistent_objects(), compress=...)
    inc(); tracer.execute(tracer.info.code); saved = <locals marked by nnsight.save()>; dec()
    torch.save(saved) -> zstd level 3 when the request was compressed -> a presigned-looking URL

so a result is what NDIF itself would hand back for the same request. Endpoints:

    POST /request         multipart: form field `data` (the RequestModel envelope JSON) + file `blob`
    GET  /response/{id}   the latest stored status (404 until the first one is stored)
    GET  /results/{id}    the result bytes behind a COMPLETED response's URL (S3-like errors)
    GET  /env, /status, /ping, /connected, /whoami     as ndif 0.1 answers them
    GET  /_peer/stats     test-only counters

    python ndif_peer.py --deployment ndif-sweep-test/tiny-llama=DIR [--deployment ...]
                        [--host 127.0.0.1] [--port 0] [--port-file PATH] [--dtype bfloat16]
                        [--api-key UUID]... [--min-nnsight-version V] [--env-nnsight-version V]
                        [--latency-ms 0] [--workers 1] [--url-ttl-s 3600]
                        [--fail-rate 0] [--fail-kinds k1,k2] [--fail-seed 0]

Prints `listening on http://HOST:PORT` on stdout once serving and runs until SIGTERM/SIGINT.
"""

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import heapq
import hmac
import io
import json
import linecache
import logging
import os
import secrets
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlencode

# Before nnsight is imported anywhere: nnsight mounts a `.save` attribute on every object
# (CONFIG.APP.PYMOUNT), and anyio's TypedAttributeSet subclasses, which its asyncio backend
# defines lazily on first use, refuse any public attribute without a type annotation
# ("Attribute 'save' is missing its type annotation"). Loading the backend first avoids it.
import anyio._backends._asyncio  # noqa: E402,F401  (order matters, see above)
from starlette.responses import Response as StarletteResponse  # noqa: E402

FAULT_KINDS = (
    "http500",
    "http503",
    "error_status",
    "expired_url",
    "truncate",
    "slow",
    "bad_zstd",
    "payload_error",
)

TRANSFORMERS_CLASS = "nnsight.modeling.transformers.TransformersModel"
TASK = "text-generation"
ACTOR_CLASS = "ndif.services.ray.deployments.modeling.base.ModelActor"

# ---------------------------------------------------------------------------------------------
# The texts ndif 0.1 sends. Kept word for word: clients (and tests) match on them.

MSG_RECEIVED = "Your job has been received and is waiting to be queued."
MSG_QUEUED = "Added to Queue at position {position}."
MSG_PROVISIONING = "Model Provisioning..."
MSG_DISPATCHED = "Your job has been sent to the model deployment."
MSG_RUNNING = "Your job has started running."
MSG_COMPLETED = "Your job has been completed."
MSG_CANCELLED = "Your job was cancelled or preempted by the server."
MSG_PROVISION_FAILED = (
    "Error provisioning model. Please try again later. Sorry for the inconvenience."
)
MSG_MISSING_KEY = (
    "Missing or invalid API key. Please visit https://login.ndif.us/ to create a new one."
)
MSG_BAD_KEY_FORMAT = (
    "Invalid API key format: '{key}'. API keys must be in the format: "
    "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx. You can obtain a valid API key from "
    "https://login.ndif.us"
)
MSG_UNKNOWN_KEY = "Invalid API key."
MSG_UNAVAILABLE = (
    "Service temporarily unavailable: compute backend is reconnecting. "
    "Please try again in a few minutes."
)
MSG_INTERNAL = "Internal server error."
MSG_NO_RESPONSE = "No response for request {id}."
MSG_KEY_ON_RESULT = "presigned result URLs take no ndif-api-key header"
MSG_BLOCKING_UNSUPPORTED = (
    "ndif_peer serves non-blocking requests only: the envelope's session_id must be empty."
)


class RequestError(Exception):
    """A request that cannot be run, reported to the caller as a sentence (never a traceback)."""


class PayloadError(RequestError):
    """The serialized payload could not be read at all (ndif's wording)."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(
            "Your request payload could not be read "
            f"({type(cause).__name__}: {cause}). It may be truncated or "
            "corrupted in transit, or compressed differently than the request "
            "declared. Re-sending it usually resolves this; if it persists, "
            "check that the client and server nnsight versions match."
        )


class ArchitectureMismatchError(RequestError):
    """The client's module tree names a module the served model does not have (ndif's wording)."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            "The model architecture on this server doesn't match the one your "
            f"code was traced against: it has no module at '{path}'.\n\n"
            "This usually means the package versions differ between your "
            "machine and the server — most often `transformers`, which "
            "determines a checkpoint's module layout. Compare the two "
            "environments with:\n\n"
            "    from nnsight import ndif\n"
            "    print(ndif.compare())\n\n"
            "then align any mismatch it flags under nnsight / transformers / "
            "torch and re-run."
        )


def s3_error(code: str, message: str, **fields: str) -> bytes:
    """An S3-style XML error body, like the object store's presigned-URL failures."""
    extra = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items())
    request_id = secrets.token_hex(8).upper()
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}"
        f"<RequestId>{request_id}</RequestId><HostId>{secrets.token_hex(16)}</HostId></Error>"
    ).encode()


def iso8601(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_key_for(repo_id: str) -> str:
    """The model key nnsight 0.8.1 mints for TransformersModel(repo_id, task="text-generation").

    HuggingFaceModel._remoteable_model_key gives {"repo_id", "revision"} (the Hub-canonical id;
    the peer's ids are canonical already) and TransformersModel adds "task", all through
    json.dumps with its default separators.
    """
    return f"{TRANSFORMERS_CLASS}:" + json.dumps(
        {"repo_id": repo_id, "revision": None, "task": TASK}
    )


# ---------------------------------------------------------------------------------------------
# Seeded fault draws: one per POST sequence number, independent of timing and of other POSTs.

_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def draw_fault(rate: float, kinds: List[str], seed: int, sequence: int) -> Optional[str]:
    if rate <= 0 or not kinds:
        return None
    draw = _mix64((seed & _M64) ^ _mix64(sequence))
    if (draw >> 11) * 2.0**-53 >= rate:
        return None
    return kinds[_mix64(draw) % len(kinds)]


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclasses.dataclass
class Job:
    id: str
    seq: int
    model_key: str
    compress: bool
    env: dict
    blob: Optional[bytes]
    fault: Optional[str]
    received_at: float
    deployment: Optional["Deployment"] = None
    status: str = "RECEIVED"
    stored: Optional[bytes] = None  # the latest stored response JSON (GET /response/{id})
    result: Optional[bytes] = None
    expires: Optional[int] = None
    finished_at: Optional[float] = None
    downloads: int = 0
    started_at: Optional[float] = None


class Replica:
    """One loaded copy of a deployment's model; a worker thread runs one job at a time on it."""

    def __init__(self, model: Any) -> None:
        self.model = model


class Deployment:
    def __init__(self, repo_id: str, local_dir: str, dtype_name: str, workers: int) -> None:
        import torch
        from nnsight.modeling.transformers import TransformersModel
        from transformers import AutoConfig

        self.repo_id = repo_id
        self.local_dir = local_dir
        self.model_key = model_key_for(repo_id)
        self.replica_id = hashlib.sha1(self.model_key.encode()).hexdigest()[:5]
        self.dtype_name = dtype_name
        dtype = getattr(torch, dtype_name)
        self.replicas: List[Replica] = []
        for _ in range(workers):
            model = TransformersModel(local_dir, task=TASK, dispatch=True, dtype=dtype)
            model._module.requires_grad_(False)
            self.replicas.append(Replica(model))
        module = self.replicas[0].model._module
        self.n_params = sum(p.numel() for p in module.parameters())
        self.size_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
        # ndif reports the checkpoint's own config (AutoConfig of the repo), as a JSON string.
        config = AutoConfig.from_pretrained(local_dir)
        config._name_or_path = repo_id
        self.config_json = config.to_json_string()
        self.waiting: deque = deque()

    @property
    def name(self) -> str:
        """ndif's application name of a replica: '<replica_id>:ModelActor:<model_key>'."""
        return f"{self.replica_id}:ModelActor:{self.model_key}"


@contextlib.contextmanager
def block_scope():
    """Undo what building and running one block leaves in process-global caches.

    Deserializing registers the block's source in linecache under the client's filename, and
    a nested trace memoizes its parsed block in nnsight's SOURCES/BLOCKS by filename and line;
    left in place, a later request from the same client file could run a stale block.
    """
    from nnsight.tracing.globals import BLOCKS, SOURCES

    saved = (dict(linecache.cache), dict(SOURCES), dict(BLOCKS))
    try:
        yield
    finally:
        for live, snapshot in zip((linecache.cache, SOURCES, BLOCKS), saved):
            live.clear()
            live.update(snapshot)


def format_error(exception: BaseException) -> str:
    """A rejected request reads as its sentence; a failure inside the block as its traceback,
    without nnsight's frames or this server's own (ndif's format_error)."""
    if isinstance(exception, RequestError):
        return str(exception)
    from nnsight.tracing.util import clean_traceback, filter_traceback

    tb = clean_traceback(exception.__traceback__)
    tb = filter_traceback(tb, lambda frame: frame.f_code.co_filename != __file__)
    return "".join(traceback.format_exception(type(exception), exception, tb))


def deserialize(blob: bytes, model: Any, compress: bool) -> Any:
    from nnsight.intervention.serialization import UnknownPersistentIdError
    from nnsight.schema.request import RequestModel

    persistent_objects = model._remoteable_persistent_objects()
    try:
        return RequestModel.deserialize(blob, persistent_objects, compress=compress)
    except UnknownPersistentIdError as error:
        raise ArchitectureMismatchError(str(error)) from error
    except Exception as error:
        raise PayloadError(error) from error


def run_block(model: Any, job: Job) -> bytes:
    """nnsight's server path for one request; returns the result blob (compressed as asked)."""
    import torch
    import zstandard
    from nnsight.tracing.tracer import _saves, dec, inc

    model._remoteable_set_env(job.env)
    blob = job.blob or b""
    if job.fault == "payload_error":
        # The bytes as a transfer that lost its second half would deliver them.
        blob = blob[: len(blob) // 2]
    tracer = deserialize(blob, model, job.compress)
    inc()
    try:
        tracer.execute(tracer.info.code)
        saves = _saves()
        saved = {
            name: value
            for name, value in tracer.info.frame.f_locals.items()
            if id(value) in saves
        }
    finally:
        dec()
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    data = buffer.getvalue()
    if job.compress or job.fault == "bad_zstd":
        data = zstandard.ZstdCompressor(level=3).compress(data)
    if job.fault == "bad_zstd":
        # Keep the zstd magic and the frame header; damage the blocks that follow.
        keep = min(len(data), 6)
        body = max(len(data) // 2, 16)
        data = data[:keep] + bytes([0xA5]) * body
    return data


class Peer:
    def __init__(self, args: argparse.Namespace, deployments: List[Deployment]) -> None:
        self.args = args
        self.deployments = {d.model_key: d for d in deployments}
        self.secret = secrets.token_bytes(32)
        self.base_url = ""  # set once the socket is bound
        self.lock = threading.Condition()
        self.exec_lock = threading.Lock()
        self.jobs: "OrderedDict[str, Job]" = OrderedDict()
        self.timers: list = []  # heap of (due, n, callable)
        self.timer_n = 0
        self.last_reap = 0.0
        self.sequence = 0
        self.stopping = False
        self.result_bytes = 0
        self.stats: Dict[str, Any] = {
            "submitted": 0,
            "completed": 0,
            "errored": 0,
            "rejected": 0,
            "downloads": 0,
            # Bytes on the wire (HTTP bodies): multipart POSTs that made a job, result downloads
            # served, and status polls answered.
            "request_body_bytes": 0,
            "result_body_bytes": 0,
            "polls": 0,
            "faults": {},
            "by_model": {},
        }
        self.threads: List[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        t = threading.Thread(target=self._timer_loop, name="admission", daemon=True)
        t.start()
        self.threads.append(t)
        for deployment in self.deployments.values():
            for i, replica in enumerate(deployment.replicas):
                t = threading.Thread(
                    target=self._worker,
                    args=(deployment, replica),
                    name=f"worker-{deployment.repo_id}-{i}",
                    daemon=True,
                )
                t.start()
                self.threads.append(t)

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()

    def _later(self, delay_s: float, fn: Callable[[], None]) -> None:
        """Runs fn on the admission thread after delay_s (caller holds self.lock)."""
        self.timer_n += 1
        heapq.heappush(self.timers, (time.monotonic() + delay_s, self.timer_n, fn))
        self.lock.notify_all()

    def _timer_loop(self) -> None:
        with self.lock:
            while not self.stopping:
                now = time.monotonic()
                while self.timers and self.timers[0][0] <= now:
                    _, _, fn = heapq.heappop(self.timers)
                    try:
                        fn()
                    except Exception:  # keep admitting the other jobs
                        logging.getLogger("ndif_peer").exception("admission step failed")
                if now - self.last_reap >= 1.0:
                    self.last_reap = now
                    self._reap()
                wait = 1.0
                if self.timers:
                    wait = min(wait, max(0.0, self.timers[0][0] - time.monotonic()))
                self.lock.wait(wait)

    def _reap(self) -> None:
        """Forgets finished jobs after --keep-s, and the oldest results past the byte budget."""
        now = time.time()
        for job_id in [j.id for j in self.jobs.values()
                       if j.finished_at is not None and now - j.finished_at > self.args.keep_s]:
            self._forget(job_id)
        if self.result_bytes > self.args.max_result_bytes:
            for job in list(self.jobs.values()):
                if self.result_bytes <= self.args.max_result_bytes:
                    break
                if job.result is not None:
                    self.result_bytes -= len(job.result)
                    job.result = None
        while len(self.jobs) > self.args.max_jobs:
            oldest = next((j.id for j in self.jobs.values() if j.finished_at is not None), None)
            if oldest is None:
                break
            self._forget(oldest)

    def _forget(self, job_id: str) -> None:
        job = self.jobs.pop(job_id, None)
        if job is not None and job.result is not None:
            self.result_bytes -= len(job.result)

    # -- status bookkeeping (caller holds self.lock) ------------------------------------------

    def _model_stats(self, model_key: str) -> dict:
        return self.stats["by_model"].setdefault(
            model_key, {"submitted": 0, "completed": 0, "errored": 0}
        )

    def _store(self, job: Job, status: str, description: str, data: Any = None,
               meta: Optional[dict] = None) -> None:
        from nnsight.schema.response import ResponseModel

        job.status = status
        job.stored = ResponseModel(
            id=job.id, status=status, description=description, data=data, meta=meta
        ).model_dump_json().encode()
        if status in ("COMPLETED", "ERROR"):
            job.finished_at = time.time()
            job.blob = None
            self.stats["completed" if status == "COMPLETED" else "errored"] += 1
            self._model_stats(job.model_key)["completed" if status == "COMPLETED" else "errored"] += 1
        self.lock.notify_all()

    # -- ingress -------------------------------------------------------------------------------

    def next_sequence(self) -> int:
        with self.lock:
            self.sequence += 1
            return self.sequence

    def count_fault(self, kind: str) -> None:
        with self.lock:
            self.stats["faults"][kind] = self.stats["faults"].get(kind, 0) + 1

    def count_rejected(self) -> None:
        with self.lock:
            self.stats["rejected"] += 1

    def submit(self, seq: int, envelope: Any, blob: bytes, fault: Optional[str]) -> Job:
        job = Job(
            id=uuid.uuid4().hex,
            seq=seq,
            model_key=envelope.model_key,
            compress=bool(envelope.compress),
            env=dict(envelope.env or {}),
            blob=blob,
            fault=fault,
            received_at=time.time(),
            deployment=self.deployments.get(envelope.model_key),
        )
        with self.lock:
            self.jobs[job.id] = job
            self.stats["submitted"] += 1
            self._model_stats(job.model_key)["submitted"] += 1
            self._later(self.args.latency_ms / 1000.0, lambda: self._admit(job))
        return job

    def _admit(self, job: Job) -> None:
        """The dispatcher hands the job to its model's processor (admission thread, locked)."""
        if job.id not in self.jobs:
            return
        deployment = job.deployment
        if deployment is None:
            # ndif: no replica exists for the key, provisioning one fails, the queue is purged.
            self._store(job, "PROVISIONING", MSG_PROVISIONING)
            self._later(0.05, lambda: self._store(job, "ERROR", MSG_PROVISION_FAILED))
            return
        deployment.waiting.append(job)
        self._store(job, "QUEUED", MSG_QUEUED.format(position=len(deployment.waiting)))

    # -- execution -----------------------------------------------------------------------------

    def _worker(self, deployment: Deployment, replica: Replica) -> None:
        while True:
            with self.lock:
                while not self.stopping and not deployment.waiting:
                    self.lock.wait()
                if self.stopping:
                    return
                job = deployment.waiting.popleft()
                if job.id not in self.jobs:
                    continue
                self._store(job, "DISPATCHED", MSG_DISPATCHED)
                job.started_at = time.time()
                self._store(job, "RUNNING", MSG_RUNNING)
            try:
                self._run(replica, job)
            except Exception:  # a fault of the peer itself: fail the job, keep the worker
                logging.getLogger("ndif_peer").exception("job %s failed in the peer", job.id)
                with self.lock:
                    if job.id in self.jobs and job.status not in ("COMPLETED", "ERROR"):
                        self._store(job, "ERROR", MSG_INTERNAL)

    @staticmethod
    def _meta(started: float) -> dict:
        # ndif's request_meta on a machine without GPUs: only the run time is known.
        return {
            "runtime": round(time.time() - started, 4),
            "max_memory_usage": 0,
            "max_mem_by_gpu": {},
            "max_mem_pct_by_gpu": {},
        }

    def _run(self, replica: Replica, job: Job) -> None:
        started = time.time()
        if job.fault == "error_status":
            with self.lock:
                self._store(job, "ERROR", MSG_CANCELLED, meta=self._meta(started))
            return
        result = None
        message = None
        # One block at a time per process: linecache and nnsight's source caches are global
        # (NDIF runs every replica in a process of its own).
        with self.exec_lock:
            with block_scope():
                try:
                    result = run_block(replica.model, job)
                except Exception as exception:  # the block's own failure, or a rejected request
                    message = format_error(exception)
                finally:
                    with contextlib.suppress(Exception):
                        replica.model.interleaver.cancel()
        with self.lock:
            if job.id not in self.jobs:
                return
            if message is not None:
                self._store(job, "ERROR", message, meta=self._meta(started))
                return
            job.result = result
            self.result_bytes += len(result)
            ttl = self.args.url_ttl_s
            expires = int(time.time()) + ttl
            if job.fault == "expired_url":
                expires = int(time.time()) - 1
            job.expires = expires
            self._store(job, "COMPLETED", MSG_COMPLETED, data=self.presign(job.id, expires, ttl),
                        meta=self._meta(started))

    # -- presigned results ---------------------------------------------------------------------

    def signature(self, job_id: str, expires: int) -> str:
        return hmac.new(self.secret, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def presign(self, job_id: str, expires: int, ttl: int) -> str:
        query = urlencode({"expires": expires, "ttl": ttl,
                           "signature": self.signature(job_id, expires)})
        return f"{self.base_url}/results/{job_id}?{query}"


# ---------------------------------------------------------------------------------------------
# HTTP


class _DeliberateAbort(Exception):
    """Raised mid-body to drop the connection on purpose (the `truncate` fault)."""


class _QuietAbort(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _DeliberateAbort)


def make_app(peer: Peer):
    from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
    from fastapi.exception_handlers import request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.encoders import jsonable_encoder
    from fastapi.responses import JSONResponse, Response
    from nnsight.schema.request import RequestModel
    from nnsight.schema.response import ResponseModel
    from packaging.version import InvalidVersion, Version
    from pydantic import ValidationError

    args = peer.args
    app = FastAPI(title="NDIF API (ndif_peer)")

    @app.exception_handler(HTTPException)
    async def http_exception(request: Request, exc: HTTPException) -> JSONResponse:
        if request.url.path == "/request":
            peer.count_rejected()
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.detail},
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        if request.url.path == "/request":
            peer.count_rejected()
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> JSONResponse:
        if not isinstance(exc, _DeliberateAbort):
            logging.getLogger("ndif_peer").error("unhandled error", exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": MSG_INTERNAL})

    def verify_api_key(api_key: Optional[str]) -> None:
        """ndif's auth.py with the key table given by --api-key (auth off without one)."""
        if not args.api_key:
            return
        if not api_key:
            raise HTTPException(status_code=401, detail=MSG_MISSING_KEY)
        try:
            key = uuid.UUID(api_key)
        except (ValueError, TypeError):
            raise HTTPException(status_code=400, detail=MSG_BAD_KEY_FORMAT.format(key=api_key))
        if key not in peer.known_keys:
            raise HTTPException(status_code=403, detail=MSG_UNKNOWN_KEY)

    def validate_request(
        data: str = Form(..., description="JSON-encoded request envelope"),
        api_key: Optional[str] = Header(default=None, alias="ndif-api-key"),
    ) -> RequestModel:
        try:
            envelope = RequestModel.model_validate_json(data)
        except ValidationError as exc:
            raise HTTPException(status_code=422, detail=jsonable_encoder(exc.errors()))
        except json.JSONDecodeError as exc:
            raise HTTPException(status_code=422, detail=f"Invalid JSON: {exc}")
        verify_api_key(api_key)
        return envelope

    def reject(detail: str) -> None:
        raise HTTPException(status_code=400, detail=detail)

    def validate_client_versions(nnsight_version: Optional[str],
                                 python_version: Optional[str]) -> None:
        """ndif's versioning.py with the minimums given on the command line."""
        if args.min_nnsight_version:
            if not nnsight_version:
                reject("Client nnsight version was not provided. This usually means an "
                       "outdated nnsight; please `pip install --upgrade nnsight` and retry.")
            try:
                client = Version(nnsight_version)
            except InvalidVersion:
                reject(f"Malformed nnsight version '{nnsight_version}'.")
            if client < Version(args.min_nnsight_version):
                reject(f"Client nnsight version {nnsight_version} is below the minimum "
                       f"supported {args.min_nnsight_version}. Please "
                       f"`pip install --upgrade nnsight`.")
        if args.min_python_version:
            if not python_version:
                reject("Client python version was not provided. This usually means an "
                       "outdated nnsight; please `pip install --upgrade nnsight` and retry.")
            major_minor = ".".join(python_version.split(".")[0:2])
            try:
                client = Version(major_minor)
            except InvalidVersion:
                reject(f"Malformed python version '{python_version}'.")
            if client < Version(args.min_python_version):
                reject(f"Client python version {major_minor} is below the minimum "
                       f"supported {args.min_python_version}. Please update python.")

    @app.post("/request")
    async def create_request(
        request: Request,
        envelope: RequestModel = Depends(validate_request),
        blob: UploadFile = File(..., description="Serialized request blob"),
        ndif_timestamp: Optional[str] = Header(default=None),
        nnsight_version: Optional[str] = Header(default=None),
        python_version: Optional[str] = Header(default=None),
    ):
        validate_client_versions(nnsight_version, python_version)
        if envelope.session_id:
            raise HTTPException(status_code=400, detail=MSG_BLOCKING_UNSUPPORTED)
        payload = await blob.read()
        seq = peer.next_sequence()
        fault = draw_fault(args.fail_rate, args.fail_kinds, args.fail_seed, seq)
        if fault:
            peer.count_fault(fault)
        if fault == "http500":
            peer.count_rejected()
            return JSONResponse(status_code=500, content={"detail": MSG_INTERNAL})
        if fault == "http503":
            raise HTTPException(status_code=503, detail=MSG_UNAVAILABLE)
        job = peer.submit(seq, envelope, payload, fault)
        with peer.lock:
            peer.stats["request_body_bytes"] += int(request.headers.get("content-length", "0"))
        received = ResponseModel(id=job.id, status="RECEIVED", description=MSG_RECEIVED)
        return JSONResponse(content=json.loads(received.model_dump_json()))

    @app.get("/response/{id}")
    async def get_response(id: str):
        with peer.lock:
            peer.stats["polls"] += 1
            job = peer.jobs.get(id)
            stored = job.stored if job is not None else None
        if stored is None:
            raise HTTPException(status_code=404, detail=MSG_NO_RESPONSE.format(id=id))
        return Response(content=stored, media_type="application/json")

    def xml(status: int, body: bytes) -> Response:
        return Response(status_code=status, content=body, media_type="application/xml")

    @app.get("/results/{id}")
    async def get_result(id: str, request: Request):
        if request.headers.get("ndif-api-key") is not None:
            raise HTTPException(status_code=400, detail=MSG_KEY_ON_RESULT)
        query = request.query_params
        try:
            expires = int(query.get("expires", ""))
        except ValueError:
            return xml(403, s3_error("AccessDenied", "Query-string authentication requires the "
                                     "Signature, Expires and AWSAccessKeyId parameters"))
        signature = query.get("signature", "")
        if not hmac.compare_digest(signature, peer.signature(id, expires)):
            return xml(403, s3_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you "
                "provided. Check your key and signing method."))
        now = time.time()
        if now > expires:
            ttl = query.get("ttl", str(args.url_ttl_s))
            return xml(403, s3_error("AccessDenied", "Request has expired",
                                     **{"X-Amz-Expires": ttl, "Expires": iso8601(expires),
                                        "ServerTime": iso8601(now)}))
        with peer.lock:
            job = peer.jobs.get(id)
            data = job.result if job is not None else None
            first = job is not None and job.downloads == 0
            if data is not None:
                job.downloads += 1
                peer.stats["downloads"] += 1
                peer.stats["result_body_bytes"] += len(data)
            fault = job.fault if job is not None else None
        if data is None:
            return xml(404, s3_error("NoSuchKey", "The specified key does not exist.",
                                     Key=f"{id}.pt"))
        cut = len(data) // 2 if (fault == "truncate" and first) else None
        return ResultBody(data, cut=cut, slow_s=args.slow_s if fault == "slow" else 0.0)

    @app.get("/env")
    async def get_env():
        return JSONResponse(content=peer.env)

    @app.get("/status")
    async def get_status():
        deployments = {}
        for d in peer.deployments.values():
            deployments[d.name] = {
                "application_state": "RUNNING",
                "deployment_level": "HOT",
                "pinned": True,
                "trusted": False,
                "dtype": d.dtype_name,
                "execution_timeout_seconds": None,
                "model_key": d.model_key,
                "replica_id": d.replica_id,
                "repo_id": d.repo_id,
                "task": TASK,
                "revision": None,
                "config": d.config_json,
                "n_params": d.n_params,
                "size_bytes": d.size_bytes,
                "actor_class": ACTOR_CLASS,
                "gpus": None,
            }
        return JSONResponse(content={"deployments": deployments, "cluster": {"nodes": {}}})

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    @app.api_route("/connected", methods=["GET", "HEAD"])
    async def connected() -> Dict[str, str]:
        return {"status": "connected"}

    @app.get("/whoami")
    async def whoami() -> Dict[str, Any]:
        return {"email": None, "tags": []}

    @app.get("/_peer/stats")
    async def peer_stats():
        with peer.lock:
            return JSONResponse(content=json.loads(json.dumps(peer.stats)))

    return app


class ResultBody(StarletteResponse):
    """The result download: the full Content-Length always; `cut` drops the connection after
    that many bytes, `slow_s` spreads the body over that many seconds."""

    CHUNK = 64 * 1024

    def __init__(self, data: bytes, cut: Optional[int], slow_s: float) -> None:
        # Not Response.__init__: the body is sent by __call__ below, piece by piece.
        self.status_code = 200
        self.background = None
        self.data = data
        self.cut = cut
        self.slow_s = slow_s

    async def __call__(self, scope, receive, send) -> None:
        data = self.data
        await send({
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(data)).encode()),
            ],
        })
        end = len(data) if self.cut is None else self.cut
        if self.slow_s > 0:
            pieces = max(1, min(64, len(data)))
            step = max(1, -(-len(data) // pieces))
            delay = self.slow_s / pieces
        else:
            step, delay = self.CHUNK, 0.0
        offset = 0
        while offset < end:
            piece = data[offset:min(end, offset + step)]
            offset += len(piece)
            if delay:
                await asyncio.sleep(delay)
            await send({"type": "http.response.body", "body": piece,
                        "more_body": offset < len(data)})
        if offset < len(data):
            raise _DeliberateAbort("result download cut short on purpose (truncate fault)")


def package_versions(nnsight_version: Optional[str]) -> dict:
    """ndif's controller env(): every installed distribution under its import names."""
    from importlib.metadata import distributions, packages_distributions

    dist_to_imports: Dict[str, List[str]] = {}
    for import_name, dist_names in packages_distributions().items():
        for dist_name in dist_names:
            dist_to_imports.setdefault(dist_name, []).append(import_name)
    packages = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        for import_name in dist_to_imports.get(name) or [name]:
            packages[import_name] = dist.version
    if nnsight_version:
        packages["nnsight"] = nnsight_version
    return {"python_version": sys.version, "packages": packages}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="An NDIF (ndif 0.1 / nnsight 0.8.1) test peer.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file", help="write the bound port here (atomically)")
    p.add_argument("--deployment", action="append", default=[], metavar="REPO_ID=DIR",
                   help="serve the model in DIR as REPO_ID (repeatable)")
    p.add_argument("--dtype", default="bfloat16", help="serving dtype (NDIF: bfloat16)")
    p.add_argument("--api-key", action="append", default=[], metavar="UUID",
                   help="accept only these keys (repeatable); without any, auth is off")
    p.add_argument("--min-nnsight-version", help="400 for an older or missing nnsight-version")
    p.add_argument("--min-python-version", help="400 for an older or missing python-version")
    p.add_argument("--env-nnsight-version", help="the nnsight version GET /env reports")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="time from POST until the job enters its model's queue")
    p.add_argument("--workers", type=int, default=1,
                   help="jobs at once per deployment (one model copy each)")
    p.add_argument("--url-ttl-s", type=int, default=3600, help="presigned URL lifetime")
    p.add_argument("--keep-s", type=float, default=3600.0, help="how long finished jobs are kept")
    p.add_argument("--max-jobs", type=int, default=100000)
    p.add_argument("--max-result-bytes", type=int, default=1 << 30)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-kinds", default="", help="comma-separated: " + ",".join(FAULT_KINDS))
    p.add_argument("--fail-seed", type=int, default=0)
    p.add_argument("--slow-s", type=float, default=2.0, help="duration of a `slow` download")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)

    kinds = [k.strip() for k in args.fail_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        p.error(f"unknown --fail-kinds {unknown}; known: {','.join(FAULT_KINDS)}")
    args.fail_kinds = kinds or list(FAULT_KINDS)
    if not 0.0 <= args.fail_rate <= 1.0:
        p.error("--fail-rate must be within [0, 1]")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if not args.deployment:
        p.error("give at least one --deployment REPO_ID=DIR")
    pairs = []
    for item in args.deployment:
        repo_id, sep, local_dir = item.partition("=")
        if not sep or not repo_id or not local_dir:
            p.error(f"--deployment wants REPO_ID=DIR, got {item!r}")
        if not os.path.isdir(local_dir):
            p.error(f"--deployment {repo_id}: no such directory {local_dir}")
        pairs.append((repo_id, local_dir))
    args.deployment = pairs
    args.known_keys = set()
    for key in args.api_key:
        try:
            args.known_keys.add(uuid.UUID(key))
        except ValueError:
            p.error(f"--api-key must be a UUID, got {key!r}")
    return args


def write_port_file(path: str, port: int) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w") as handle:
        handle.write(f"{port}\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import uvicorn

    torch.set_num_threads(args.threads)
    deployments = [Deployment(repo_id, local_dir, args.dtype, args.workers)
                   for repo_id, local_dir in args.deployment]
    keys = [d.model_key for d in deployments]
    if len(set(keys)) != len(keys):
        print("ndif_peer: two --deployment entries share a repo id", file=sys.stderr)
        return 2
    import gc

    gc.collect()
    gc.freeze()

    peer = Peer(args, deployments)
    peer.known_keys = args.known_keys
    import nnsight

    peer.env = package_versions(args.env_nnsight_version or nnsight.__version__)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    public_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(args.host, args.host)
    if ":" in public_host:
        public_host = f"[{public_host}]"
    peer.base_url = f"http://{public_host}:{port}"

    logging.getLogger("uvicorn.error").addFilter(_QuietAbort())
    app = make_app(peer)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=2, lifespan="off", http="h11")

    class Server(uvicorn.Server):
        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.should_exit:
                return
            if args.port_file:
                write_port_file(args.port_file, port)
            print(f"listening on {peer.base_url}", flush=True)

    peer.start()
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
