# berth images, built from source on official base images:
#   docker build --target registry -t berth-registry .
#   docker build --target proxy    -t berth-proxy .
# (docker-compose build does this for compose.yml.) Both run as the unprivileged user `berth`; the entry point
# gives that user the mounted data, certs and auth folders first.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && install -m 0755 target/release/berth-registry target/release/berth-proxy /usr/local/bin/

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin berth
COPY docker/entrypoint.sh /usr/local/bin/berth-entrypoint
ENTRYPOINT ["/usr/local/bin/berth-entrypoint"]

FROM runtime AS registry
COPY --from=build /usr/local/bin/berth-registry /usr/local/bin/
ENV REGISTRY_HTTP_ADDR=0.0.0.0:5000 REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/data
EXPOSE 5000
CMD ["berth-registry"]

FROM runtime AS proxy
COPY --from=build /usr/local/bin/berth-proxy /usr/local/bin/
ENV BERTH_LISTEN=0.0.0.0:443 BERTH_CERTS_DIR=/certs BERTH_HTPASSWD=/auth/htpasswd
EXPOSE 443
CMD ["berth-proxy", "serve"]
