"""The service's settings: one pydantic-settings object, read from `ALEXNET_*` environment variables.

Every field `foo` is set by the environment variable `ALEXNET_FOO` (case-insensitive); `alexnet-serve`'s
flags override the environment. An empty variable counts as unset. docs/api.md lists every setting with
its default (tests/test_settings_doc.py holds the table to these fields).

Two variables of the versions before the model repository are still read, as deprecated aliases (`aliases`):
``ALEXNET_MODEL_NAME=NAME`` is ``ALEXNET_MODELS=NAME`` and ``ALEXNET_MODEL_VERSION=N`` is
``ALEXNET_VERSION_POLICY=NAME=specific:N`` (plain ``specific:N`` when no single model is named).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from alexnet_store.store import StoreError, validate_name
from service import defaults
from service.traffic import Traffic, parse_table
from service.version_policy import Policies, VersionPolicy

if TYPE_CHECKING:
    from service.pipeline import PipelineConfig

ENV_PREFIX = "ALEXNET_"
PROG = "alexnet-serve"

# The deprecated settings of the versions before the model repository, and what replaced each of them.
DEPRECATED = {"model_name": "models", "model_version": "version_policy"}


class AliasError(SettingsError):
    """A deprecated alias given with the setting it aliases, and the two disagree (or the alias is malformed)."""


def aliases(model_name: str | None, model_version: str | int | None, models: str | list[str] | None,
            version_policy: str | None, spell: Callable[[str], str]) -> tuple[dict[str, Any], list[str]]:
    """Map the deprecated `model_name` / `model_version` onto `models` / `version_policy`.

    `spell(field)` is how the caller's user writes a setting (``--model-name`` or ``ALEXNET_MODEL_NAME``).
    Returns the values to use for `models` and `version_policy` (only those the aliases set) and one warning
    per alias used. `model_name` NAME is models ``[NAME]``; `model_version` N is the policy ``NAME=specific:N``
    when one model is named (by `model_name`, or `models` with one entry), plain ``specific:N`` otherwise.
    Given together with the setting it aliases, an alias must agree with it (`models` exactly ``[NAME]``; the
    policy that `version_policy` gives that model, or its default policy, exactly ``specific:N``), and the
    new setting is kept; otherwise AliasError."""
    out: dict[str, Any] = {}
    notes: list[str] = []

    def given(field: str, value: object) -> str:
        if spell(field).startswith("--"):
            return f"{spell(field)} {value}"
        return f"{spell(field)}='{value}'" if "=" in str(value) else f"{spell(field)}={value}"

    names = None if models is None else Settings._split_models(models)
    if model_name is not None:
        model_name = str(model_name).strip()
        if names is not None and names != [model_name]:
            raise AliasError(f"{given('model_name', model_name)} conflicts with {given('models', ','.join(names))}: "
                             f"{spell('model_name')} is deprecated, give only {spell('models')}")
        if names is None:
            out["models"] = names = [model_name]
        notes.append(f"{spell('model_name')} is deprecated; use {given('models', model_name)}")
    if model_version is not None:
        try:
            version = int(str(model_version).strip())
            if version < 1:
                raise ValueError
        except ValueError:
            raise AliasError(f"{spell('model_version')}: a version number (1, 2, ...) is needed, not "
                             f"{str(model_version)!r}") from None
        scope = names[0] if names is not None and len(names) == 1 else None
        policy = f"{scope}=specific:{version}" if scope else f"specific:{version}"
        if version_policy is not None:
            try:
                policies = Policies.parse(version_policy)
            except ValueError as exc:
                raise AliasError(f"{spell('version_policy')}: {exc}") from None
            if (policies.for_model(scope) if scope else policies.default) != VersionPolicy("specific",
                                                                                            versions=(version,)):
                raise AliasError(f"{given('model_version', version)} conflicts with "
                                 f"{given('version_policy', version_policy)}: {spell('model_version')} is deprecated, "
                                 f"give only {spell('version_policy')}")
        else:
            out["version_policy"] = policy
        notes.append(f"{spell('model_version')} is deprecated; use {given('version_policy', policy)}")
    return out, notes


def warn_deprecated(notes: list[str]) -> None:
    """Each note as one `alexnet-serve: warning: ...` line on stderr, and as a DeprecationWarning."""
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr, flush=True)
        warnings.warn(note, DeprecationWarning, stacklevel=3)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


class _EnvWithAliases(PydanticBaseSettingsSource):
    """The environment, with ALEXNET_MODEL_NAME / ALEXNET_MODEL_VERSION mapped by `aliases` (with a warning)."""

    def __init__(self, settings_cls: type[BaseSettings], env: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.env.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data = self.env()
        env = self.env

        def read(field: str) -> str | None:
            key = env.env_prefix + field
            return env.env_vars.get(key if env.case_sensitive else key.lower())

        old = {field: read(field) for field in DEPRECATED}
        if all(v is None for v in old.values()):
            return data
        mapped, notes = aliases(old["model_name"], old["model_version"], data.get("models"),
                                data.get("version_policy"), env_name)
        warn_deprecated(notes)
        return {**data, **mapped}

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, case_sensitive=False, extra="ignore", protected_namespaces=(),
        validate_default=True,
        env_ignore_empty=True,  # ALEXNET_MODELS= (compose passing an unset variable) means "not set"
    )

    # -- the model repository -------------------------------------------------------------------------------
    model_store: Path = Field(Path("model_store"), description="root of the model store")
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="models to serve, comma-separated; empty = every model in the store")
    version_policy: str = Field(
        "latest:1", description="versions to serve: 'latest:N' (the newest N), 'all' or 'specific:V1,V2'; per model "
                                "with 'name=policy' entries separated by ';', e.g. 'latest:1; digits=all'")
    repository_poll_seconds: float = Field(
        15.0, ge=0, description="how often the store is checked for new, changed or removed versions, which are "
                                "loaded, warmed up and switched to while serving; 0 = only at start and on "
                                "POST /v2/repository/models/{name}/load")
    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["auto"],
        description="ONNX Runtime execution providers in order of preference, comma-separated; 'auto' = "
                    "CUDAExecutionProvider first when this onnxruntime build has it and an NVIDIA driver is present, "
                    "then CPUExecutionProvider",
    )
    intra_op_threads: int = Field(
        defaults.INTRA_OP_THREADS, ge=0,
        description="ONNX Runtime intra-op threads per worker; 0 = ORT's default (all physical cores) "
                    "with one worker, cores ÷ workers with several")
    intra_op_spinning: bool = Field(
        defaults.INTRA_OP_SPINNING,
        description="ONNX Runtime's idle threads spin-wait for work instead of sleeping; off by default: "
                    "no faster on a quiet CPU, slower when the cores are shared (docs/benchmark.md)")
    cpu_reorder_elision: bool = Field(
        defaults.CPU_REORDER_ELISION,
        description="on the CPU, run the LRN's elementwise ops in ONNX Runtime's blocked layout instead of "
                    "converting to NCHW and back around them (checked against the plain session at load; "
                    "+7 % fp32, docs/performance.md)")
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = Field(
        defaults.CUDNN_CONV_ALGO_SEARCH,
        description="CUDA only: how cuDNN picks convolution algorithms; EXHAUSTIVE times them all "
                    "again for every new batch size, which dynamic batching makes many of")
    warmup_batch: int = Field(10, ge=1, description="patches in the warm-up run before the service says ready")

    # -- the server ---------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="interface to listen on (0.0.0.0 in a container)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0 = any free port)")
    workers: int = Field(1, ge=1, description="uvicorn worker processes, each with its own model repository")
    log_level: LogLevel = Field("info", description="log level")
    drain_seconds: int = Field(
        30, ge=0, description="on SIGTERM, how long requests in flight may take to finish before the process "
                              "exits (uvicorn's graceful-shutdown timeout); orchestrators must wait longer "
                              "(compose's stop_grace_period, Kubernetes' terminationGracePeriodSeconds)")
    access_log: bool = Field(True, description="one log line per request (service/logs.py; it replaces "
                                               "uvicorn's access log)")
    log_format: Literal["text", "json"] = Field(
        "text", description="'text' (uvicorn's layout) or 'json' (one JSON object per line: the container images' "
                            "choice); every line about a request carries its request id and trace id")

    # -- tracing (service/tracing.py) ---------------------------------------------------------------------------
    tracing: bool = Field(False, description="OpenTelemetry traces: a span per inference request with child spans "
                                             "for its steps and batch, exported over OTLP/HTTP")
    tracing_endpoint: str = Field(
        "http://127.0.0.1:4318/v1/traces", pattern=r"^https?://\S+$",
        description="where spans are sent: an OTLP/HTTP (protobuf) traces endpoint, e.g. an OpenTelemetry "
                    "Collector's")
    tracing_sample_ratio: float = Field(
        1.0, ge=0, le=1, description="share of requests traced when the client's traceparent does not decide "
                                     "(a sampled client trace is always followed)")

    # -- traffic control (service/traffic.py) --------------------------------------------------------------------
    traffic: str = Field(
        "", description="per model, a split of the requests that name no version over its loaded versions, by "
                        "weight: 'alexnet=3:90,4:10; digits=1:1,2:1'; empty = the default version")
    shadow: str = Field(
        "", description="per model, versions that get a copy of a share (percent) of the requests the split routes: "
                        "'alexnet=5:25'; their answers are compared with the primary's and discarded")
    traffic_sticky_header: str = Field(
        "", pattern=r"^([!#$%&'*+.^_`|~0-9A-Za-z-]+)?$",
        description="a request header (e.g. X-User-ID) whose value picks the split's version, the same one for "
                    "as long as the weights stay; empty = the request id picks")
    shadow_max_inflight: int = Field(
        4, ge=1, description="shadow copies running at once per worker; beyond, and when the service is busy, "
                             "copies are dropped (shed) first")

    # -- authentication (service/auth.py) ----------------------------------------------------------------------
    api_keys_file: Path | None = Field(
        None, description="a file of API keys, one per line (the key, or sha256:<hex> of it), each optionally "
                          "followed by its scope, infer (default) or admin; unset = no authentication")
    metrics_require_key: bool = Field(True, description="with API keys on, /metrics needs a key too")
    docs_require_key: bool = Field(False, description="with API keys on, /docs and /openapi.json need a key too")

    # -- limits on what a request may contain ---------------------------------------------------------------
    max_file_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest accepted image file")
    max_request_bytes: int = Field(100 * 1024 * 1024, ge=1, description="largest accepted request body")
    max_files_per_request: int = Field(32, ge=1, description="most images in one request")
    max_pixels: int = Field(defaults.MAX_PIXELS, ge=1, description="most pixels (width × height) of one image")
    jpeg_draft: bool = Field(defaults.JPEG_DRAFT, description="decode large JPEGs at 1/2, 1/4 or 1/8 scale when that "
                                                              "still gives at least the resize size (Pillow draft)")

    max_inflight_bytes: int = Field(
        0, ge=0, description="request bytes held at once (bodies being received, their images being classified) "
                             "before new requests get 503 at once; 0 = 1/32 of the memory the process may use, "
                             "at most 256 MiB")
    max_inflight_images: int = Field(
        0, ge=0, description="images held at once (parsed, being decoded or classified) before new requests get 503 "
                             "at once; 0 = one per 12 MiB of that 1/32 of memory, 16 to 128")

    reclaim_idle_seconds: float = Field(
        2.0, ge=0, description="after this long with no request in flight, give memory back (ONNX Runtime's arena "
                               "and glibc's free pages), so a burst's memory does not stay; 0 = never")

    # -- concurrency --------------------------------------------------------------------------------------
    decode_threads: int = Field(0, ge=0, description="threads decoding images per worker; 0 = CPU count")
    inference_concurrency: int = Field(1, ge=1, description="model runs at the same time per worker")
    instances: str = Field(
        str(defaults.INSTANCES), pattern=r"^(auto|[1-9][0-9]*)$",
        description="CPU instance group per model version: that many extra sessions of `instance_threads` "
                    "threads, one run each at a time, sharing the version's batching queue; 'auto' = one per "
                    "physical core (÷ workers); 1 = none (one session, `inference_concurrency` runs at a time). "
                    "instances × instance_threads may not exceed the cores (docs/performance.md)")
    instance_threads: int = Field(
        0, ge=0, description="intra-op threads of each instance; 0 = cores ÷ instances")
    adaptive_instances: bool = Field(
        True, description="with instances: a batch that runs while nothing else runs or waits takes the "
                          "all-cores session (a lone request's latency), the instances take the rest")
    max_queued_inferences: int = Field(
        64, ge=0, description="requests waiting for the model per worker before new ones get 503; 0 = no limit")
    batching: bool = Field(True, description="dynamic batching: gather the patches of concurrent requests into one "
                                             "model run; false = one run per request")
    max_batch_patches: int = Field(
        80, ge=1, description="most patches in one model run with batching (ten per image with crops=ten); "
                              "a larger request is split into runs of at most this many")
    max_batch_delay_ms: float = Field(
        0.0, ge=0, description="with batching, how long the oldest waiting request may be held for others to "
                               "join its run when the model is free and the batch is not full")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After sent with 503 answers")

    # -- gallery search (service/gallery.py, issue 20) -------------------------------------------------------------
    search_max_neighbours: int = Field(
        100, ge=1, description="the most gallery images one search returns per image (its k; at most the gallery's "
                               "size)")

    # Set by alexnet-serve: a worker whose model fails to load exits (code 3) instead of staying unready.
    exit_on_load_failure: bool = False

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        if isinstance(env_settings, EnvSettingsSource):
            env_settings = _EnvWithAliases(settings_cls, env_settings)
        return init_settings, env_settings, dotenv_settings, file_secret_settings

    @field_validator("models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            return [str(v).strip() for v in value if str(v).strip()]
        return value

    @field_validator("models")
    @classmethod
    def _check_models(cls, value: list[str]) -> list[str]:
        for name in value:
            try:
                validate_name(name)
            except StoreError as exc:
                raise ValueError(str(exc)) from exc
        return value

    @field_validator("version_policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        Policies.parse(value)
        return value

    @property
    def policies(self) -> Policies:
        return Policies.parse(self.version_policy)

    @field_validator("traffic", "shadow")
    @classmethod
    def _check_traffic(cls, value: str, info: Any) -> str:
        parse_table(value, env_name(info.field_name), share=info.field_name == "shadow")
        return value

    def traffic_rules(self) -> Traffic:
        """The traffic split and shadows to start with (service/traffic.py); the control API changes them."""
        return Traffic.parse(self.traffic, self.shadow)

    @field_validator("providers", mode="before")
    @classmethod
    def _split_providers(cls, value: object) -> object:
        if isinstance(value, str):
            value = [p.strip() for p in value.split(",")]
        if isinstance(value, list | tuple):
            value = [str(p).strip() for p in value if str(p).strip()]
            return value or ["auto"]
        return value

    @field_validator("providers")
    @classmethod
    def _check_auto(cls, value: list[str]) -> list[str]:
        if "auto" in value and value != ["auto"]:
            raise ValueError("'auto' cannot be combined with explicit providers")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def provider_request(self) -> list[str] | None:
        """What ClassifierModel takes: None for 'auto', else the list."""
        return None if self.providers == ["auto"] else list(self.providers)

    def effective_intra_op_threads(self) -> int:
        if self.intra_op_threads or self.workers == 1:
            return self.intra_op_threads
        return max(1, (os.cpu_count() or 1) // self.workers)

    def worker_cores(self) -> int:
        """The physical cores one worker may use (service/session.py `physical_cores`, ÷ workers)."""
        from service.session import physical_cores

        return max(1, physical_cores() // self.workers)

    def effective_instances(self) -> int:
        return self.worker_cores() if self.instances == "auto" else int(self.instances)

    def effective_instance_threads(self) -> int:
        """Each instance's threads; 0 without an instance group."""
        if self.effective_instances() <= 1:
            return 0
        return self.instance_threads or max(1, self.worker_cores() // self.effective_instances())

    def check_instances(self) -> None:
        """Refuse an instance group that asks for more threads than the cores (alexnet-serve calls it at start)."""
        n, threads, cores = self.effective_instances(), self.effective_instance_threads(), self.worker_cores()
        if n > 1 and n * threads > cores:
            raise ValueError(f"ALEXNET_INSTANCES={n} × ALEXNET_INSTANCE_THREADS={threads} is {n * threads} threads, "
                             f"more than the {cores} physical cores each worker has: lower one of them, or use "
                             "ALEXNET_INSTANCES=auto")
        if n > 1 and self.inference_concurrency > 1:
            raise ValueError("ALEXNET_INFERENCE_CONCURRENCY applies to one session; with ALEXNET_INSTANCES > 1 each "
                             "instance runs one batch at a time: leave ALEXNET_INFERENCE_CONCURRENCY at 1")

    def effective_decode_threads(self) -> int:
        return self.decode_threads or max(1, os.cpu_count() or 1)

    def pipeline_config(self) -> PipelineConfig:
        """What every version's `Pipeline` is built from (service/pipeline.py `PipelineFactory`)."""
        from service.model import RuntimeOptions
        from service.pipeline import PipelineConfig
        from service.preprocess import DecodeLimits

        return PipelineConfig(
            providers=self.provider_request, runtime=RuntimeOptions.from_settings(self),
            warmup_batch=self.warmup_batch, limits=DecodeLimits(max_pixels=self.max_pixels, draft=self.jpeg_draft),
            decode_threads=self.effective_decode_threads(), batching=self.batching,
            max_batch_patches=self.max_batch_patches, max_batch_delay_ms=self.max_batch_delay_ms,
            max_queued=self.max_queued_inferences, concurrency=self.inference_concurrency,
            adaptive_instances=self.adaptive_instances, retry_after=self.retry_after_seconds)

    def to_env(self) -> dict[str, str]:
        """The settings as ALEXNET_* variables, so uvicorn's worker processes rebuild the same object."""
        env = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, list):
                value = ",".join(value)
                if not value:
                    continue
            elif isinstance(value, bool):
                value = "true" if value else "false"
            env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return env
