# syntax=docker/dockerfile:1.7
#
# GreenLang Orchestrator worker image. Build from the repository root, with BuildKit:
#
#   docker build -f deploy/docker/worker.Dockerfile -t greenlang/orchestrator-worker:local .
#
# The image runs as uid/gid 10001, writes nothing outside /tmp and therefore runs with a read-only
# root filesystem (mount an emptyDir or tmpfs on /tmp). It contains no interpreter: `command`
# agents need an image built FROM this one that adds their programs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY . .
# Same cache ids as coordinator.Dockerfile: the engine crate and common dependencies compile once.
RUN --mount=type=cache,id=gl-orchestrator-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=gl-orchestrator-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=gl-orchestrator-target,target=/src/target,sharing=locked \
    cargo build --release --locked -p worker \
 && install -D -m 0755 target/release/worker /out/worker
RUN printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\norchestrator:x:10001:10001:GreenLang Orchestrator:/nonexistent:/sbin/nologin\n' > /out/passwd \
 && printf 'root:x:0:\nnogroup:x:65534:\norchestrator:x:10001:\n' > /out/group

FROM gcr.io/distroless/cc-debian12 AS runtime
LABEL org.opencontainers.image.title="greenlang-orchestrator-worker" \
      org.opencontainers.image.description="GreenLang Orchestrator worker: runs DAG node tasks from RabbitMQ" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/passwd /etc/passwd
COPY --from=builder /out/group /etc/group
COPY --from=builder /out/worker /usr/local/bin/worker
ENV GL_ORCHESTRATOR_WORKER_METRICS_ADDR=0.0.0.0:9091 \
    LOG_FORMAT=json \
    TMPDIR=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 9091
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/worker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/worker"]
