# syntax=docker/dockerfile:1
# pgwarden container image: a static-ish Rust binary on slim Debian, non-root.
#
#   docker build -t pgwarden:0.1.0 .
#   docker run --rm -p 6432:6432 -p 9187:9187 \
#       -e PGWARDEN__UPSTREAM__HOST=db.internal pgwarden:0.1.0
#
# The configuration is a file: mount your own over /etc/pgwarden/pgwarden.toml
# and the master and audit keys as files under /etc/pgwarden/keys/ (read-only, mode 0600).
# Any key can also be overridden with PGWARDEN__SECTION__KEY=value.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# aws-lc-sys (the proxy's AEADs and rustls provider) compiles AWS-LC with the
# image's gcc; no cmake or Go is needed.
WORKDIR /src
COPY . .
# The cache mounts keep the registry and build directory between builds; the
# binary is copied out of the cached target/ so that the next stage sees it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release -p pgwarden \
    && install -m 0755 target/release/pgwarden /usr/local/bin/pgwarden

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: for TLS toward Postgres (verify-ca / verify-full).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgwarden \
    && useradd --system --uid 10001 --gid pgwarden --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgwarden \
    && mkdir -p /etc/pgwarden/keys \
    && printf '%s\n' \
        '# Default image config: mount your own over this file.' \
        '[listen]' \
        'address = "0.0.0.0:6432"' \
        '' \
        '[upstream]' \
        'host = "postgres"          # PGWARDEN__UPSTREAM__HOST overrides' \
        'port = 5432' \
        '' \
        '[metrics]' \
        'address = "0.0.0.0:9187"   # /metrics, /healthz, /readyz' \
        > /etc/pgwarden/pgwarden.toml
COPY --from=build /usr/local/bin/pgwarden /usr/local/bin/pgwarden

# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 6432 9187
# No curl in the image: bash's /dev/tcp sends the request. If you move
# metrics.address off port 9187, override this HEALTHCHECK.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9187 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM (Docker's and Kubernetes' stop signal) drains sessions for up to
# listen.shutdown_grace; give the container at least that long to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgwarden"]
CMD ["run", "--config", "/etc/pgwarden/pgwarden.toml"]
