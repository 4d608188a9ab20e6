# pglive's container image: docker build -t pglive:0.1.0 .
# The binary needs glibc and libgcc only (TLS is rustls; no OpenSSL), plus the CA certificates
# for verify-full and amqps, taken from the build stage. The runtime stage has no package
# manager run in it and runs as the unprivileged user 65532.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pglive

FROM debian:bookworm-slim
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/pglive /usr/local/bin/pglive
USER 65532:65532
# 8080: the WebSocket relay (where a websocket sink listens); 9187: /healthz, /readyz, /metrics.
EXPOSE 8080 9187
ENTRYPOINT ["/usr/local/bin/pglive"]
CMD ["run", "--config", "/etc/pglive/pglive.toml"]
