# syntax=docker/dockerfile:1.7
#
# GreenLang Orchestrator coordinator image (`coordinator serve`, `coordinator migrate`).
# Build from the repository root, with BuildKit (the default builder of current Docker):
#
#   docker build -f deploy/docker/coordinator.Dockerfile -t greenlang/orchestrator-coordinator:local .
#
# The image runs as uid/gid 10001, writes nothing outside /tmp and therefore runs with a read-only
# root filesystem (mount an emptyDir or tmpfs on /tmp).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0
COPY . .
# The registry, git and target directories are cache mounts shared with worker.Dockerfile, so the
# common dependencies compile once. The target directory is not part of any layer: the binary is
# copied out of it in the same step. Migrations are embedded at compile time (sqlx::migrate!).
RUN --mount=type=cache,id=gl-orchestrator-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=gl-orchestrator-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=gl-orchestrator-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin coordinator \
 && install -D -m 0755 target/release/coordinator /out/coordinator
# distroless has no useradd: give uid/gid 10001 a name in passwd/group for tools that look it up.
RUN printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\norchestrator:x:10001:10001:GreenLang Orchestrator:/nonexistent:/sbin/nologin\n' > /out/passwd \
 && printf 'root:x:0:\nnogroup:x:65534:\norchestrator:x:10001:\n' > /out/group

# glibc, libgcc and ca-certificates; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12 AS runtime
LABEL org.opencontainers.image.title="greenlang-orchestrator-coordinator" \
      org.opencontainers.image.description="GreenLang Orchestrator coordinator: REST API, scheduler and migrations" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/passwd /etc/passwd
COPY --from=builder /out/group /etc/group
COPY --from=builder /out/coordinator /usr/local/bin/coordinator
ENV GL_ORCHESTRATOR_HTTP_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json \
    TMPDIR=/tmp
USER 10001:10001
WORKDIR /tmp
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/coordinator", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/coordinator"]
CMD ["serve"]
