"""OpenTelemetry traces, off by default (``ALEXNET_TRACING=true`` turns them on).

On, each inference request is one server span (the FastAPI instrumentation from PyPI: ``POST
/v2/models/{model}/infer``, W3C ``traceparent`` taken from the client, so the span joins the client's trace),
carrying the request's model, version, routing, crop scheme, images and request id as ``alexnet.*`` attributes,
with a child span per step it went through — ``read`` (receiving and parsing the body), ``preprocess``,
``queue`` (its patches waiting for a batch), ``inference`` (the model run of the batch it rode in:
``alexnet.batch.patches``, ``alexnet.batch.requests``), ``postprocess`` — and a ``shadow`` span for each copy of
it run on a shadow version. The child spans are made from the times the request's record holds
(service/requestctx.py), once the answer is built, so the steps themselves carry no tracing code.

Sampling is the SDK's ``ParentBased(TraceIdRatioBased(ALEXNET_TRACING_SAMPLE_RATIO))``: a client's sampled
trace is always followed, other requests are sampled at that ratio. Spans go in batches over OTLP/HTTP
(protobuf) to ``ALEXNET_TRACING_ENDPOINT``. Health probes and /metrics are never traced.

Nothing here is imported unless tracing is on, so the service starts without the OpenTelemetry packages
(the ``serve`` extra installs them).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from service.requestctx import STEPS, RequestRecord, wall_ns
from service.server_info import SERVER_NAME, VERSION

if TYPE_CHECKING:
    from fastapi import FastAPI

    from service.settings import Settings

log = logging.getLogger(__name__)

EXCLUDED_URLS = r"/health/,/v2/health/,/metrics$"  # regexes searched in the URL: probes and scrapes


class Tracing:
    def __init__(self, settings: Settings, exporter: Any = None) -> None:
        """`exporter`: a span exporter to use instead of OTLP/HTTP (the tests' in-memory one), fed span by span."""
        try:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        except ImportError as exc:
            raise ImportError(f"ALEXNET_TRACING=true needs the OpenTelemetry packages of the serve extra "
                              f"(pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http "
                              f"opentelemetry-instrumentation-fastapi): {exc}") from exc

        self.endpoint = settings.tracing_endpoint
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": SERVER_NAME, "service.version": VERSION}),
            sampler=ParentBased(TraceIdRatioBased(settings.tracing_sample_ratio)))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=self.endpoint)))
        else:
            self.provider.add_span_processor(SimpleSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("service")

    @classmethod
    def from_settings(cls, settings: Settings, exporter: Any = None) -> Tracing | None:
        return cls(settings, exporter) if settings.tracing else None

    def instrument(self, app: FastAPI) -> None:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, tracer_provider=self.provider, excluded_urls=EXCLUDED_URLS,
                                           exclude_spans=["receive", "send"])
        log.info("tracing on: OTLP/HTTP to %s", self.endpoint)

    @staticmethod
    def trace_id() -> str | None:
        """The trace id of the span being handled now (hex), None outside one."""
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        return f"{context.trace_id:032x}" if context.is_valid else None

    @staticmethod
    def parent() -> Any:
        """The current span, to hang a later span under (a shadow copy's); None when it is not recorded."""
        from opentelemetry import trace

        span = trace.get_current_span()
        return span if span.is_recording() else None

    def finish(self, record: RequestRecord) -> None:
        """The request's attributes on its server span, and a child span per step: called as the last of the answer
        is sent (the instrumentation ends the server span right after)."""
        from opentelemetry import trace

        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes = {"alexnet.request_id": record.request_id, "alexnet.model": record.model,
                      "alexnet.version": record.version, "alexnet.routing": record.routing,
                      "alexnet.crops": record.crops, "alexnet.images": record.images,
                      "alexnet.error": record.error, "alexnet.reason": record.reason}
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        context = trace.set_span_in_context(span)
        for name in STEPS:
            if name not in record.steps:
                continue
            start, end = record.steps[name]
            child = self.tracer.start_span(name, context=context, start_time=wall_ns(start))
            if name == "inference" and record.batch:
                child.set_attributes({f"alexnet.batch.{k}": v for k, v in record.batch.items()})
            child.end(end_time=wall_ns(end))

    def shadow_span(self, parent: Any, model: str, version: int, start: float, end: float, outcome: str) -> None:
        from opentelemetry import trace

        span = self.tracer.start_span("shadow", context=trace.set_span_in_context(parent), start_time=wall_ns(start),
                                      attributes={"alexnet.model": model, "alexnet.version": version,
                                                  "alexnet.shadow.outcome": outcome})
        span.end(end_time=wall_ns(end))

    def shutdown(self) -> None:
        """Send what is still buffered (the lifespan's end)."""
        self.provider.shutdown()
