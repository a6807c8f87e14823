"""The encoder process: builds each batch's NDIF G4 request with the user's own nnsight.

Production NDIF (nnsight 0.8 with the ndif 0.1 server) takes a multipart POST whose ``blob`` is a
pickle of nnsight's own objects, which only nnsight can write, and which changes between nnsight
releases. So ndif-sweep keeps transport, polling, decoding and storage in C++, and lets this small
long-lived process, running the interpreter that has the user's nnsight, turn each batch into the
envelope, blob and headers that nnsight's ``RemoteBackend`` would send. It never touches the
network: the model is a meta skeleton (no weights) built offline from a local directory or the
Hugging Face cache.

One encoder serves every rank of a node over a Unix socket (``--socket``); messages are framed as
in ``ndif_sweep.wire``. It lives exactly as long as the process that started it: it exits when its
standard input reaches end of file, which happens when that process ends, however it ends.

Operations (JSON requests; replies carry ``"ok"``):

``hello``
    Versions of the interpreter and of nnsight, torch and transformers. Fails with kind
    ``no_nnsight`` when nnsight cannot be imported.
``open``
    Builds the meta skeleton of ``model`` (``revision``, or the directory ``model_dir``), checks
    every probe's modules against it (they exist, run in the forward, and give a
    (batch, seq, hidden) tensor at ``output_index``) and learns the order they run in. Returns the
    pad token id, whether the forward takes ``position_ids``, the model's shape. A second ``open``
    with the same configuration is answered from the first.
``tokenize``
    The model's own Hugging Face tokenizer on ``texts`` (the tokenizer canary).
``encode``
    One batch: the attachment holds ``input_ids`` (int32, batch x seq), ``attention_mask``
    (uint8, batch x seq) and the padding-adjusted ``positions`` (int32, batch x positions), all
    built by ndif-sweep. Replies with the envelope JSON and the headers, the blob as attachment.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import socket
import sys
import threading
import traceback
from typing import Any, Optional

from . import wire

#: The variable the trace saves, so the one result is found by name (ndif-g4: results are the
#: saved locals of the block, keyed by variable name).
SAVE_NAME = "ndif_sweep_acts"

DTYPES = ("float16", "bfloat16", "float32")

#: Test hook: ``NDIF_SWEEP_ENCODER_TEST_FAULT=KIND:N[:MARKER]`` makes the N-th encode of this process
#: misbehave, once per MARKER file when one is given (the fault creates it). KIND is ``crash``
#: (the process exits), ``hang`` (it never answers), ``garbage`` (bytes that are not a frame),
#: ``wrong_dtype`` (a blob that converts to float32 instead), ``wrong_shape`` (one that reads one
#: position fewer) or ``wrong_name`` (one that saves another variable). ndif-sweep's tests use it to prove that each failure is survived or reported.
FAULT_ENV = "NDIF_SWEEP_ENCODER_TEST_FAULT"


class EncoderError(Exception):
    """A failure reported to the client as ``kind`` and a message that names the fix."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> Optional[str]:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: installed(name) for name in ("nnsight", "torch", "transformers", "tokenizers")}


def _hello() -> dict:
    try:
        import nnsight  # noqa: F401  (the user's own installation)
        from nnsight.intervention.backends import remote
    except Exception as error:  # noqa: BLE001 - any import failure means no usable nnsight
        raise EncoderError(
            "no_nnsight",
            f"{sys.executable} cannot import nnsight ({type(error).__name__}: {error}); install "
            "nnsight in that environment (pip install nnsight), or point the job's \"python\" key "
            "or NDIF_SWEEP_PYTHON at an interpreter that has it",
        ) from error
    return {
        "ok": True,
        "protocol": wire.PROTOCOL,
        "python": sys.version,
        "executable": sys.executable,
        # What nnsight's own client reports in its nnsight-version header.
        "nnsight": remote._NNSIGHT_VERSION or _versions()["nnsight"],
        "packages": _versions(),
        "pid": os.getpid(),
    }


def _positions_from_mask(mask):
    """position_ids of a left-padded batch: each row counted from its first real token, so left
    padding does not shift absolute positions (nnsight's own ``processing.positions`` rule)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _trace(model, inputs, reads, uses, rows, positions, dtype, backend):
    # The body of this block is what NDIF runs next to the weights: nnsight ships its source and
    # the names it reads. It reads each module once, in the order the forward runs them (nnsight
    # refuses an output that the model already ran past), slices the requested positions of every
    # row right away (so only one full module output is alive at a time on the server), stacks
    # probes and layers into one (batch, layers, positions, hidden) tensor, converts it and saves
    # it once under one fixed name.
    import torch

    with model.trace(inputs, backend=backend):
        picked = {}
        for k, envoy in enumerate(reads):
            out = envoy.output
            for slot, index in uses[k]:
                value = out if index is None else out[index]
                picked[slot] = value[rows, positions]
        ndif_sweep_acts = torch.stack([picked[s] for s in range(len(picked))], dim=1).to(dtype).save()


class _Fault:
    """The parsed test fault, if any (see FAULT_ENV)."""

    def __init__(self, text: str) -> None:
        parts = text.split(":")
        self.kind = parts[0]
        self.at = int(parts[1]) if len(parts) > 1 and parts[1] else 1
        self.marker = parts[2] if len(parts) > 2 else ""
        self.encodes = 0

    def due(self) -> Optional[str]:
        self.encodes += 1
        if self.encodes != self.at:
            return None
        if self.marker:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                return None
        return self.kind


class Encoder:
    """The meta model and the per-batch encoding; every public method holds the lock, because
    nnsight's tracing is not meant for concurrent use of one model."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.config: Optional[dict] = None
        self.opened: Optional[dict] = None
        self.model = None
        fault = os.environ.get(FAULT_ENV, "")
        self.fault = _Fault(fault) if fault else None

    # -- open ------------------------------------------------------------------------------

    def open(self, config: dict) -> dict:
        with self.lock:
            key = {k: config.get(k) for k in ("model", "revision", "model_dir", "model_key", "probes", "dtype")}
            if self.opened is not None:
                if key != self.config:
                    raise EncoderError(
                        "bad_request", "this encoder was opened for another job configuration"
                    )
                return self.opened
            self.opened = self._open(key)
            self.config = key
            return self.opened

    def _open(self, config: dict) -> dict:
        import torch

        _hello()
        if config.get("dtype") not in DTYPES:
            raise EncoderError("bad_request", f"dtype must be one of {DTYPES}, got {config.get('dtype')!r}")
        if not isinstance(config.get("model_key"), str) or not config["model_key"]:
            raise EncoderError("bad_request", "model_key must be a non-empty string")
        self.model = self._build_meta(config)
        self.model_key = config["model_key"]
        self.dtype = getattr(torch, config["dtype"])
        self.env = self.model._remoteable_get_env()

        envoys = {envoy.path: envoy for envoy in self.model.modules()}
        module = self.model._module
        slots = []  # (module path, output_index, what) in result order
        for probe in config["probes"]:
            for layer in probe["layers"]:
                path = probe["module"].replace("{layer}", str(layer))
                what = f"probe \"{probe['name']}\" layer {layer} (module \"{path}\")"
                try:
                    module.get_submodule(path)
                except AttributeError:
                    raise EncoderError(
                        "bad_probe",
                        f"{what}: the model {config['model']} has no such module; its top-level "
                        f"modules are {', '.join(n for n, _ in module.named_children())} (paths are "
                        "relative to the model, e.g. \"model.layers.{layer}\")",
                    ) from None
                slots.append((path, probe.get("output_index"), what))

        structure = self._structure(sorted({path for path, _, _ in slots}))
        hidden = self._hidden_size()
        for path, index, what in slots:
            self._check_output(structure[path], index, what, hidden)

        order = structure["__order__"]
        reads_paths = sorted({path for path, _, _ in slots}, key=order.index)
        self.reads = [envoys["model." + path if path else "model"] for path in reads_paths]
        self.uses = [[] for _ in reads_paths]
        for slot, (path, index, _) in enumerate(slots):
            self.uses[reads_paths.index(path)].append((slot, index))
        self.takes_position_ids = "position_ids" in inspect.signature(module.forward).parameters
        tokenizer = self.model.tokenizer
        if tokenizer is None:
            raise EncoderError("model_files", f"the model {config['model']} has no tokenizer files")
        return {
            "ok": True,
            "pad_token_id": int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0,
            "position_ids": self.takes_position_ids,
            "hidden_size": hidden,
            "num_hidden_layers": int(getattr(module.config, "num_hidden_layers", 0) or 0),
            "vocab_size": int(getattr(module.config, "vocab_size", 0) or 0),
            "read_order": reads_paths,
            "env": self.env,
        }

    def _build_meta(self, config: dict):
        # Offline by construction: the encoder never touches the network.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        from nnsight.modeling.transformers import TransformersModel

        source = config.get("model_dir") or config["model"]
        try:
            return TransformersModel(source, revision=config.get("revision"), task="text-generation")
        except Exception as error:  # noqa: BLE001 - every failure here is about the model's files
            where = (
                f"the directory {config['model_dir']}"
                if config.get("model_dir")
                else f"the Hugging Face cache ({os.environ.get('HF_HUB_CACHE') or os.environ.get('HF_HOME') or '~/.cache/huggingface'})"
            )
            raise EncoderError(
                "model_files",
                f"cannot build the meta skeleton of {config['model']} from {where}: "
                f"{type(error).__name__}: {error}. The encoder needs the model's config.json and "
                "tokenizer files (no weights), offline; on a machine with internet run "
                f"`hf download {config['model']} config.json generation_config.json "
                "tokenizer.json tokenizer_config.json` (after `hf auth login` for a gated repo) "
                "into the cache the compute nodes read, or set NDIF_SWEEP_MODEL_DIR to a "
                "directory holding those files",
            ) from error

    def _structure(self, paths: list) -> dict:
        """Runs the meta model's forward under fake tensors (no weights, no compute) with hooks on
        the probed modules: the order they run in and what each returns."""
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import ShapeEnv

        module = self.model._module
        seen: dict = {}
        order: list = []

        def describe(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return ("tensor", tuple(value.shape))
            if isinstance(value, (tuple, list)):
                return ("tuple", [describe(v) for v in value])
            return ("other", type(value).__name__)

        handles = []
        for path in paths:
            sub = module.get_submodule(path)

            def hook(_module, _args, output, path=path):
                if path not in seen:
                    order.append(path)
                    seen[path] = describe(output)

            handles.append(sub.register_forward_hook(hook))
        try:
            with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv(assume_static_by_default=True)):
                ids = torch.zeros(2, 5, dtype=torch.long, device="meta")
                mask = torch.ones(2, 5, dtype=torch.long, device="meta")
                module(input_ids=ids, attention_mask=mask)
        finally:
            for handle in handles:
                handle.remove()
        for path in paths:
            if path not in seen:
                raise EncoderError(
                    "bad_probe",
                    f"module \"{path}\" never runs in the model's forward pass, so it has no output to read",
                )
        seen["__order__"] = order
        return seen

    def _hidden_size(self) -> int:
        config = self.model._module.config
        for source in (config, getattr(config, "text_config", None)):
            value = getattr(source, "hidden_size", None) if source is not None else None
            if isinstance(value, int) and value > 0:
                return value
        raise EncoderError("model_files", "the model's config has no hidden_size")

    @staticmethod
    def _check_output(kind: Any, index: Optional[int], what: str, hidden: int) -> None:
        # The meta forward above ran a batch of 2 prompts of 5 tokens.
        if kind[0] == "tuple":
            if index is None:
                raise EncoderError(
                    "bad_probe",
                    f"{what} returns a tuple of {len(kind[1])}; set \"output_index\" to the element "
                    "that holds the hidden states (usually 0)",
                )
            if index >= len(kind[1]):
                raise EncoderError(
                    "bad_probe", f"{what} returns a tuple of {len(kind[1])}; \"output_index\" {index} is beyond it"
                )
            kind = kind[1][index]
            what = f"{what} element {index}"
        elif index is not None:
            raise EncoderError(
                "bad_probe",
                f"{what} returns a tensor, not a tuple; set \"output_index\" to null (with {index} "
                f"the request would slice batch row {index} instead of the hidden states)",
            )
        if kind[0] != "tensor" or len(kind[1]) != 3 or kind[1][0] != 2 or kind[1][1] != 5 or kind[1][2] != hidden:
            raise EncoderError(
                "bad_probe",
                f"{what} is {kind[0]} {kind[1] if kind[0] != 'other' else ''} rather than a "
                f"(batch, seq, {hidden}) tensor of hidden states",
            )

    # -- tokenize --------------------------------------------------------------------------

    def tokenize(self, request: dict) -> dict:
        with self.lock:
            if self.model is None:
                raise EncoderError("bad_request", "tokenize before open")
            texts = request.get("texts")
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise EncoderError("bad_request", "texts must be a list of strings")
            add = bool(request.get("add_special_tokens", True))
            tokenizer = self.model.tokenizer
            return {"ok": True, "ids": [tokenizer(t, add_special_tokens=add)["input_ids"] for t in texts]}

    # -- encode ----------------------------------------------------------------------------

    def encode(self, request: dict, attachment: bytes):
        import torch

        with self.lock:
            if self.model is None:
                raise EncoderError("bad_request", "encode before open")
            try:
                batch, seq, npos = (int(request[k]) for k in ("batch", "seq", "positions"))
            except (KeyError, TypeError, ValueError):
                raise EncoderError("bad_request", "encode needs integer batch, seq and positions") from None
            if batch < 1 or seq < 1 or npos < 1 or batch * seq > 1 << 28:
                raise EncoderError("bad_request", f"bad batch shape {batch} x {seq} x {npos}")
            sizes = (4 * batch * seq, batch * seq, 4 * batch * npos)
            if len(attachment) != sum(sizes):
                raise EncoderError("bad_request", f"attachment has {len(attachment)} bytes, expected {sum(sizes)}")
            data = bytearray(attachment)
            ids = torch.frombuffer(data, dtype=torch.int32, count=batch * seq, offset=0)
            mask = torch.frombuffer(data, dtype=torch.uint8, count=batch * seq, offset=sizes[0])
            positions = torch.frombuffer(data, dtype=torch.int32, count=batch * npos, offset=sizes[0] + sizes[1])
            ids = ids.to(torch.int64).reshape(batch, seq)
            mask = mask.to(torch.int64).reshape(batch, seq)
            positions = positions.to(torch.int64).reshape(batch, npos)
            if bool((positions < 0).any()) or bool((positions >= seq).any()):
                raise EncoderError("bad_request", "a position lies outside the padded batch")
            inputs = {"input_ids": ids, "attention_mask": mask}
            if self.takes_position_ids and bool(request.get("position_ids", True)):
                inputs["position_ids"] = _positions_from_mask(mask)
            backend = _capture_backend(self.model_key, self.env)
            rows = torch.arange(batch).unsqueeze(1)
            fault = self.fault.due() if self.fault else None
            if fault in ("crash", "hang", "garbage"):
                raise _Misbehave(fault)
            dtype = torch.float32 if fault == "wrong_dtype" else self.dtype
            if fault == "wrong_shape":
                positions = positions[:, :-1] if npos > 1 else positions.repeat(1, 2)
            trace = _trace_wrong_name if fault == "wrong_name" else _trace
            trace(self.model, inputs, self.reads, self.uses, rows, positions, dtype, backend)
            reply = {
                "ok": True,
                "envelope": backend.envelope,
                "compress": bool(backend.compress),
                "headers": backend.headers,
                "save_name": SAVE_NAME,
            }
            return reply, backend.blob


def _trace_wrong_name(model, inputs, reads, uses, rows, positions, dtype, backend):
    # The test fault "wrong_name": a request that saves its result under another variable.
    import torch

    index = uses[0][0][1]
    with model.trace(inputs, backend=backend):
        out = reads[0].output
        value = out if index is None else out[index]
        other = value[rows, positions].to(dtype).save()


class _Misbehave(Exception):
    """A test fault that breaks the connection rather than answering (see FAULT_ENV)."""


def _capture_backend(model_key: str, env: dict):
    """A RemoteBackend that serializes the trace exactly as nnsight's own client does and keeps
    the bytes instead of sending them."""
    from nnsight.intervention.backends import remote
    from nnsight.schema.request import RequestModel

    class Capture(remote.RemoteBackend):
        def __call__(self, tracer=None):
            self.blob = self._serialize(tracer)
            self.envelope = RequestModel(model_key=self.model_key, compress=self.compress, env=self.env).metadata()
            # RemoteBackend._post's headers, less ndif-api-key (ndif-sweep adds it) and
            # ndif-timestamp (stamped at send time).
            self.headers = {"nnsight-version": remote._NNSIGHT_VERSION, "python-version": sys.version}
            return None

    # The host is never contacted; RemoteBackend only insists that it looks like a URL.
    return Capture(model_key, host="http://127.0.0.1:9", api_key="", env=env, blocking=False)


def _serve_connection(connection: socket.socket, encoder: Encoder) -> None:
    stream = connection.makefile("rwb")
    try:
        while True:
            try:
                message = wire.read_message(stream)
            except wire.WireError as error:
                wire.write_message(stream, wire.error_reply("bad_request", str(error)))
                return
            if message is None:
                return
            request, attachment = message
            blob = b""
            try:
                op = request.get("op")
                if op == "hello":
                    reply = _hello()
                elif op == "open":
                    reply = encoder.open(request.get("config") or {})
                elif op == "tokenize":
                    reply = encoder.tokenize(request)
                elif op == "encode":
                    try:
                        reply, blob = encoder.encode(request, attachment)
                    except _Misbehave as fault:
                        if str(fault) == "crash":
                            os._exit(70)
                        if str(fault) == "hang":
                            threading.Event().wait()
                        stream.write(b"Traceback (most recent call last): not a frame\n" * 4)
                        stream.flush()
                        return
                else:
                    reply = wire.error_reply("bad_request", f"unknown operation {op!r}")
            except EncoderError as error:
                reply = wire.error_reply(error.kind, str(error))
            except Exception as error:  # noqa: BLE001 - reported to the rank, which stops the batch
                reply = wire.error_reply(
                    "internal", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
                )
            reply["op"] = request.get("op")
            wire.write_message(stream, reply, blob)
    except (BrokenPipeError, ConnectionResetError):
        pass
    finally:
        stream.close()
        connection.close()


def _exit_with_parent() -> None:
    # Standard input is a pipe whose other end only the parent holds: end of file means it is gone.
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="path of the Unix socket to serve on")
    args = parser.parse_args(argv)

    # The ranks decide about draining; the encoder only ends with its parent.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, daemon=True).start()

    encoder = Encoder()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Bound under a temporary name and renamed, so a client never connects to a half-ready socket.
    temporary = f"{args.socket}.{os.getpid()}.tmp"
    server.bind(temporary)
    os.chmod(temporary, 0o600)
    server.listen(64)
    os.replace(temporary, args.socket)
    print(f"serving {args.socket} with {sys.executable}", file=sys.stderr, flush=True)
    while True:
        connection, _ = server.accept()
        threading.Thread(target=_serve_connection, args=(connection, encoder), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
