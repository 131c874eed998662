//! Process plumbing shared by the binaries: logs, OpenTelemetry traces and the shutdown signal.

/// The tracing pipeline of a process; [`Telemetry::shutdown`] flushes spans not yet exported.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is buffered and stops the exporter (no-op when tracing is off).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.shutdown();
        }
    }

    /// [`Telemetry::shutdown`], given up after `within`: exporting buffered spans must never hold
    /// a process's exit up (an unreachable or paused collector). The export goes on in a thread
    /// of its own, which the exit then ends.
    pub fn shutdown_within(self, within: std::time::Duration) {
        let (flushed, flushing) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            self.shutdown();
            let _ = flushed.send(());
        });
        let _ = flushing.recv_timeout(within);
    }
}

/// Structured logs to stderr (JSON when `LOG_FORMAT=json`; `RUST_LOG` refines `level`) and, when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, OpenTelemetry traces exported over OTLP/HTTP (JSON) with
/// `OTEL_SERVICE_NAME` (default `service`) and the sample ratio `OTEL_TRACES_SAMPLER_ARG`
/// (default 1). The ratio applies to the trace id, which is derived from the execution id, so
/// every process keeps or drops the same executions whole.
pub fn init(level: &str, service: &str) -> Telemetry {
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.trim().is_empty()).and_then(|_| {
        match tracer_provider(service) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("tracing export disabled: {e}");
                None
            }
        }
    });
    install(level, provider.as_ref());
    Telemetry { provider }
}

/// Logs only (commands that never export traces).
pub fn init_logging(level: &str) {
    install(level, None);
}

/// Whether this process exports spans (so callers can skip preparing them).
pub fn exporting() -> bool {
    EXPORTING.load(std::sync::atomic::Ordering::Relaxed)
}

static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The process's subscriber: the log layer and, with a provider, the span layer.
fn install(level: &str, provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},sqlx=warn,lapin=warn")));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let logs = match json {
        true => fmt::layer().json().with_writer(std::io::stderr).boxed(),
        false => fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let spans = provider.map(|p| {
        use opentelemetry::trace::TracerProvider as _;
        opentelemetry::global::set_tracer_provider(p.clone());
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing_opentelemetry::layer().with_tracer(p.tracer(TRACER))
    });
    // A second initialisation (tests) is harmless: the first subscriber stays.
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(spans).try_init();
}

/// The instrumentation scope of every span.
const TRACER: &str = "greenlang-orchestrator";

fn tracer_provider(service: &str) -> Result<opentelemetry_sdk::trace::SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_timeout(otlp_timeout())
        .build()
        .map_err(|e| e.to_string())?;
    let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().and_then(|r| r.parse::<f64>().ok()).unwrap_or(1.0);
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(name).build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio.clamp(0.0, 1.0)))
        .with_resource(resource)
        .build())
}

/// The bound on one OTLP export: `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds, the standard
/// variable), 10 s by default. A collector that stops answering delays only the exporter's own
/// thread, and never longer than this.
fn otlp_timeout() -> std::time::Duration {
    let ms = std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT").ok().and_then(|t| t.parse::<u64>().ok());
    std::time::Duration::from_millis(ms.unwrap_or(10_000).clamp(100, 600_000))
}

/// Records a finished span with the ids given (not generated), so that spans written by different
/// processes at different times link up: an execution's root span, and one span per attempt that
/// the worker's span hangs under. A no-op when tracing is off.
pub fn record_span(
    name: &'static str,
    context: &engine::messages::TraceContext,
    parent_span_id: Option<&str>,
    (start, end): (std::time::SystemTime, std::time::SystemTime),
    attributes: Vec<opentelemetry::KeyValue>,
) {
    use opentelemetry::trace::{Span as _, TraceContextExt, Tracer as _};
    let (Some(trace), Some(own)) = (trace_id(&context.trace_id), span_id(&context.span_id)) else {
        return;
    };
    let tracer = opentelemetry::global::tracer(TRACER);
    let parent = match parent_span_id.and_then(span_id) {
        Some(parent) => opentelemetry::Context::new().with_remote_span_context(remote(trace, parent)),
        None => opentelemetry::Context::new(),
    };
    let mut span = tracer
        .span_builder(name)
        .with_trace_id(trace)
        .with_span_id(own)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    span.end_with_timestamp(end);
}

/// The OpenTelemetry context of a W3C trace context received from another process, for
/// `tracing_opentelemetry::OpenTelemetrySpanExt::set_parent`.
pub fn remote_parent(context: &engine::messages::TraceContext) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::TraceContextExt;
    let (trace, span) = (trace_id(&context.trace_id)?, span_id(&context.span_id)?);
    Some(opentelemetry::Context::new().with_remote_span_context(remote(trace, span)))
}

/// Attaches the trace context received from another process as the parent of `span`.
pub fn set_remote_parent(span: &tracing::Span, context: &engine::messages::TraceContext) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(parent) = remote_parent(context) {
        let _ = span.set_parent(parent);
    }
}

fn remote(
    trace: opentelemetry::trace::TraceId,
    span: opentelemetry::trace::SpanId,
) -> opentelemetry::trace::SpanContext {
    use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
    SpanContext::new(trace, span, TraceFlags::SAMPLED, true, TraceState::default())
}

fn trace_id(hex: &str) -> Option<opentelemetry::trace::TraceId> {
    opentelemetry::trace::TraceId::from_hex(hex).ok()
}

fn span_id(hex: &str) -> Option<opentelemetry::trace::SpanId> {
    opentelemetry::trace::SpanId::from_hex(hex).ok()
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// A blocking `GET path` to `addr` that succeeds on a 2xx status (the `healthcheck` subcommands;
/// no HTTP client library needed in the image).
pub fn http_ok(addr: &str, path: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    use std::time::Duration;
    let socket: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream =
        std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| e.to_string())?;
    let status = String::from_utf8_lossy(&head[9..12]).into_owned();
    if status.starts_with('2') { Ok(()) } else { Err(format!("status {status}")) }
}
