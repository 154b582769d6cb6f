"""The Serve application's arguments (`args:` of an application in a Serve config): the schema, declared
once. `parse_args` checks them before anything starts, with one line naming the key at fault, e.g.
`models[1].max_batch_size: expected an integer >= 1, got 0`."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, ValidationError, model_validator

from runtime.auth.tokens import TokenTable
from runtime.engine.backends import EngineOptions
from runtime.engine.errors import TrtserveError
from runtime.engine.repository import repository_location, resolve_version
from runtime.engine.schema import (
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    Schema,
    invalid,
    non_empty_list,
    one_line,
)


class ModelOptions(Schema):
    """How one model is served; what is not given comes from its artifact's manifest (`serving`)."""

    backend: str = "auto"  # auto | onnxruntime | tensorrt | torch | a registered backend
    precision: str | None = None  # default: the backend's preference (fp16 first on GPUs)
    max_batch_size: PositiveInt | None = None
    max_queue_delay_ms: NonNegative | None = None
    max_queued_rows: PositiveInt | None = None  # beyond this: 503 + Retry-After; default 8 batches
    timeout_s: Positive = 30.0  # beyond this: 504
    intra_op_threads: PositiveInt | None = None  # ONNX Runtime threads; default: the replica's CPUs
    spin: bool = False  # ONNX Runtime worker threads spin between calls (lower latency, more CPU)
    # Below this much available memory (host, or the GPU's for a CUDA engine) the batch limit halves,
    # back up above twice it. Default: 5% of that memory, at least 256 MiB; 0 turns it off.
    memory_low_water_mb: NonNegative | None = None
    # Text a request of a model with a tokenizer may carry, in bytes, checked before tokenizing (which costs
    # about 1 ms per 1-2 KB here). Default: 16 bytes per token the request's batch can hold
    # (max_batch_size x the longest sequence); the tokenizer truncates to that many tokens anyway.
    max_text_bytes: PositiveInt | None = None

    def engine_options(self) -> EngineOptions:
        return EngineOptions(intra_op_threads=self.intra_op_threads, spin=self.spin)


def _named(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


def _version(value: Any) -> Any:
    if value != "latest" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise invalid(f"expected a positive integer or 'latest', got {value!r}")
    return value


class Monitor(Schema):
    """Online drift of the model against its artifact's reference (runtime.monitor.drift_window)."""

    enabled: bool = True  # off: no drift accounting (and no confidence/entropy histograms)
    window_s: Positive = 60.0  # a window closes every window_s of wall-clock time
    min_rows: PositiveInt = 500  # a window with fewer rows is merged into the next


class Redact(Schema):
    drop: list[str] = Field(default_factory=list)  # inputs never written
    hash: list[str] = Field(default_factory=list)  # inputs replaced by a keyed hash (HMAC-SHA256)
    key_env: str = "TRTSERVE_CAPTURE_KEY"  # the environment variable holding the hash key

    @model_validator(mode="after")
    def _disjoint(self) -> Redact:
        both = sorted(set(self.drop) & set(self.hash))
        if both:
            raise invalid(f"{both} are both dropped and hashed; pick one", "hash")
        return self


class Rotate(Schema):
    max_rows: PositiveInt = 100_000
    max_bytes: PositiveInt = 64 << 20
    max_age_s: Positive = 300.0


class Capture(Schema):
    """Payload capture to Parquet (runtime.monitor.capture_writer); off unless sampling_percent > 0.
    Feedback (POST .../feedback) goes to the same destination."""

    sampling_percent: Annotated[float, Field(ge=0, le=100)] = 0.0
    mode: Literal["request", "response", "all"] = "all"
    destination: str | None = None  # a directory; relative paths resolve where the app is built
    redact: Redact = Field(default_factory=Redact)
    rotate: Rotate = Field(default_factory=Rotate)
    queue_max_rows: PositiveInt = 10_000  # 10 s at 1,000 requests/s; beyond it records are dropped, counted
    # The memory records waiting to be written may hold (their tensors' bytes); beyond it they are dropped,
    # counted. Feedback has its own queue of these bounds, of at least 10,000 rows (one POST's most).
    queue_max_bytes: PositiveInt = 256 << 20
    # Captured rows reach disk (an in-progress file, flushed to the OS, not fsynced) within this many
    # seconds: older rows survive a crash of the replica, made Parquet by the next writer started on the
    # destination. Feedback is fsynced before /feedback answers 200, whatever this says.
    flush_s: Positive = 5.0

    @model_validator(mode="after")
    def _where(self) -> Capture:
        if self.sampling_percent > 0 and self.destination is None:
            raise invalid("capturing needs a destination directory", "destination")
        return self

    @property
    def destination_path(self) -> Path | None:
        return None if self.destination is None else Path(self.destination).expanduser().resolve()


class ModelSpec(ModelOptions):
    """One entry of `models`: which version of which model, and how to serve it."""

    name: str
    version: Annotated[int | Literal["latest"], BeforeValidator(_version)] = "latest"
    monitor: Monitor = Field(default_factory=Monitor)
    capture: dict[str, Any] | None = None  # keys of the application's `capture` this model overrides
    capture_settings: Capture | None = None  # the effective capture (set by AppArgs from both)


# Ray Serve's autoscaling keys, passed on as they are; trtserve's policy reads the rest.
RAY_AUTOSCALING_KEYS = (
    "min_replicas",
    "max_replicas",
    "initial_replicas",
    "upscale_delay_s",
    "downscale_delay_s",
    "look_back_period_s",
    "target_ongoing_requests",
)


class Autoscaling(Schema):
    """trtserve's memory-aware policy (runtime.serve.autoscaling) on Ray Serve's autoscaler."""

    min_replicas: NonNegativeInt | None = None
    max_replicas: PositiveInt | None = None
    initial_replicas: NonNegativeInt | None = None
    target_ongoing_requests: Positive | None = None
    upscale_delay_s: NonNegative | None = None
    downscale_delay_s: NonNegative | None = None
    look_back_period_s: Positive | None = None
    hysteresis: NonNegative | None = None  # scale down only with this share to spare (0.25)
    batch_fill_high: NonNegative | None = None  # one more replica above this batch fill with rows queued (0.75)
    headroom: NonNegative | None = None  # memory kept free per replica (0.2)
    memory_budget_mb: Positive | None = None  # host memory all replicas together may take
    gpu_memory_budget_mb: Positive | None = None


class Placement(Schema):
    """What one replica reserves: measured at deploy time, or given."""

    headroom: NonNegative = 0.2  # reserve the measured need x (1 + headroom)
    measure: bool = True
    host_mb: Positive | None = None  # the whole need (rollouts included), given instead of measured
    device_mb: Positive | None = None
    # Room for this many versions of each model at once: 2 holds a rollout's stable and candidate, both
    # warm (each extra version counted as the measured footprint of the served one); 1 plans no rollouts.
    versions_per_model: Annotated[int, Field(ge=1, le=4)] = 2


class Auth(Schema):
    """Bearer-token authentication (runtime.auth.tokens); health endpoints stay open for probes."""

    tokens_file: str  # lines `<scope> <sha256 hex>`; relative paths resolve where the app is built

    @property
    def tokens_path(self) -> Path:
        """Absolute, symlinks kept: replicas watch this path, and a Kubernetes Secret swaps a symlink in it."""
        return Path(os.path.abspath(Path(self.tokens_file).expanduser()))

    @cached_property
    def table(self) -> TokenTable:
        """The file's digests, read once (when the args are checked)."""
        return TokenTable.read(self.tokens_path)


class RequestLogging(Schema):
    """Which answered inference requests get an access line (runtime.serve.access_log); every one is counted
    in the metrics whatever this says."""

    # all: every request; sampled: errors (status >= 400), slow ones and sample_percent of the rest;
    # errors: errors and slow ones only
    requests: Literal["all", "sampled", "errors"] = "sampled"
    sample_percent: Annotated[float, Field(ge=0, le=100)] = 1.0
    slow_ms: Positive = 1000.0  # a request that took longer is logged whatever `requests` says


class AppArgs(Schema):
    repository: str  # a model repository: a path (relative ones resolve where the app is built), s3://, gs://
    models: Annotated[
        list[Annotated[ModelSpec, BeforeValidator(_named)]],
        non_empty_list("expected a non-empty list of models, e.g. [{name: cnn, version: latest}]"),
    ]
    max_body_mb: Positive = 64.0  # larger bodies: 413
    num_replicas: PositiveInt | None = None
    max_replicas_per_node: PositiveInt | None = None  # Ray Serve's: 1 spreads replicas over nodes
    autoscaling: Autoscaling | None = None
    autoscaling_config: dict[str, Any] | None = None  # Ray's own, instead of `autoscaling`
    ray_actor_options: dict[str, Any] | None = None  # keys set here win over placement's
    placement: Placement = Field(default_factory=Placement)
    max_ongoing_requests: PositiveInt = 512
    max_queued_requests: int = 1024
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    logging: RequestLogging = Field(default_factory=RequestLogging)
    capture: Capture = Field(default_factory=Capture)  # every model's, unless its entry overrides keys
    auth: Auth | None = None  # off: no authentication (put the server behind something that authenticates)

    @model_validator(mode="after")
    def _consistent(self) -> AppArgs:
        if self.autoscaling is not None and (self.autoscaling_config is not None or self.num_replicas is not None):
            raise invalid(
                "give either `autoscaling` (trtserve's memory-aware policy) or Ray's `autoscaling_config` / "
                "`num_replicas`, not both",
                "autoscaling",
            )
        for i, spec in enumerate(self.models):
            merged = _merge(self.capture.model_dump(), spec.capture or {})
            try:
                settings = Capture.model_validate(merged)
            except ValidationError as e:
                raise invalid(one_line(e, Capture), f"models[{i}].capture") from None
            if settings.destination is not None:
                merged["destination"] = str(settings.destination_path)
                settings = Capture.model_validate(merged)
            object.__setattr__(spec, "capture_settings", settings)
        if self.auth is not None:
            try:  # read now: a missing or malformed file fails the deploy, naming the line
                self.auth.table  # noqa: B018 - read now, kept for build_app
            except TrtserveError as e:
                raise invalid(str(e), "auth.tokens_file") from None
        try:
            repository = self.repository_path
        except TrtserveError as e:  # an unsupported URI scheme
            raise invalid(str(e), "repository") from None
        for i, spec in enumerate(self.models):
            try:  # fails now, with the reason, if it does not exist (nothing is downloaded yet)
                resolve_version(repository, spec.name, spec.version)
            except TrtserveError as e:
                raise invalid(str(e), f"models[{i}]") from None
        return self

    @property
    def repository_path(self) -> str | Path:
        """The repository as replicas reach it: an absolute path, or the object-store URI unchanged."""
        return repository_location(self.repository)

    def versions(self) -> list[int]:
        """The version number each model entry names (`latest` resolved now)."""
        return [resolve_version(self.repository_path, spec.name, spec.version) for spec in self.models]


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_args(args: dict[str, Any] | AppArgs) -> AppArgs:
    """The application's args, checked; ValueError with one line naming the key at fault."""
    if isinstance(args, AppArgs):
        return args
    if not isinstance(args, dict):
        raise ValueError(f"application args must be a mapping, got {type(args).__name__}")
    try:
        return AppArgs.model_validate(args)
    except ValidationError as e:
        raise ValueError(f"application args: {one_line(e, AppArgs)}") from None
