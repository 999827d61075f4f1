# pgtenant container image: a stripped release binary on debian:bookworm-slim.
#
# Build:
#   docker build -t pgtenant .
# Run it next to a PostgreSQL container named `postgres` (what the default config,
# docker/proxy.toml, points at), on a network of their own:
#   docker network create pgtenant-demo
#   docker run -d --name postgres --network pgtenant-demo -e POSTGRES_USER=app \
#       -e POSTGRES_PASSWORD=app_pw -e POSTGRES_DB=app \
#       -v "$PWD/docker/init.sql:/docker-entrypoint-initdb.d/init.sql:ro" postgres:16
#   docker run -d --name pgtenant --network pgtenant-demo -p 6432:6432 -p 9930:9930 \
#       -e APP_DB_PASSWORD=app_pw pgtenant
#   psql "postgres://app:secret@127.0.0.1:6432/app?options=-c%20tenant%3Dacme" -c "select * from customers"
# (docker-compose.yml does the same in one command.) With your own PostgreSQL: copy
# docker/proxy.toml, set [backends.main] host to a name or address the container can reach
# (not 127.0.0.1: that is the container itself), and mount it:
#   docker run -p 6432:6432 -e APP_DB_PASSWORD=... \
#       -v "$PWD/my-proxy.toml:/etc/pgtenant/proxy.toml:ro" pgtenant
# Every key of the file: docs/CONFIGURATION.md. The HEALTHCHECK asks /health on port 9930:
# keep `metrics_listen = "0.0.0.0:9930"` in your config, or override the HEALTHCHECK.

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
# No debug info, symbols stripped: ~4 MB instead of ~31 MB.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# Dependencies first, in a layer of their own: built against empty sources, so that a
# change to src/ rebuilds only pgtenant itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/framing.rs \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src src
COPY benches benches
# touch: COPY keeps the files' own times, which may be older than the dummy build's.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -m 0755 target/release/pgtenant /usr/local/bin/pgtenant

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
# Unpinned on purpose: ca-certificates should be the newest the release has.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgtenant \
    && useradd --system --uid 10001 --gid pgtenant --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgtenant
COPY --from=builder /usr/local/bin/pgtenant /usr/local/bin/pgtenant
# The default config (PostgreSQL at host `postgres`, as in docker-compose.yml); mount your
# own over it.
COPY docker/proxy.toml /etc/pgtenant/proxy.toml
USER 10001:10001
EXPOSE 6432 9930
# /health answers 200 while the process runs (no curl in the image: bash's /dev/tcp).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9930 && printf 'GET /health HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1.1 200' <&3"]
ENTRYPOINT ["pgtenant"]
CMD ["--config", "/etc/pgtenant/proxy.toml"]
