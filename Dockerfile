# syntax=docker/dockerfile:1
# chatforge in a small runtime image: `docker build -t chatforge .`, then `docker run -p 8000:8000
# -v cf-data:/data chatforge` serves the API with one worker; compose.yaml runs Redis, the API and
# workers (seed 002's `make start`).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin chatforge \
 && strip target/release/chatforge

FROM debian:bookworm-slim
# TLS roots are built into the binary; nothing else is needed at run time.
RUN useradd --system --create-home --home-dir /data chatforge
COPY --from=build /src/target/release/chatforge /usr/local/bin/chatforge
USER chatforge
WORKDIR /data
VOLUME /data
ENV HF_HOME=/data/hf-cache
EXPOSE 8000
ENTRYPOINT ["chatforge"]
CMD ["serve", "--bind", "0.0.0.0:8000", "--data-root", "/data", "--log-format", "json"]
