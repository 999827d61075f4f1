# pgtenant container image. Build: `docker build -t pgtenant .`
# Run:   docker run -p 6432:6432 -v "$PWD/proxy.toml:/etc/pgtenant/proxy.toml:ro" pgtenant

# --- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
    && install -m 0755 target/release/pgtenant /usr/local/bin/pgtenant

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgtenant \
    && useradd --system --uid 10001 --gid pgtenant --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgtenant
COPY --from=builder /usr/local/bin/pgtenant /usr/local/bin/pgtenant
# A default config (the docker-compose one); mount your own over it.
COPY docker/proxy.toml /etc/pgtenant/proxy.toml
USER pgtenant
EXPOSE 6432
ENTRYPOINT ["pgtenant"]
CMD ["--config", "/etc/pgtenant/proxy.toml"]
