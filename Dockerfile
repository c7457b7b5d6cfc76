# Multi-stage build: a static binary on a distroless base, running as non-root.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/atl .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/atl /usr/local/bin/atl
# JSONL fallback directory when DATABASE_URL is not set.
ENV ATL_DATA_DIR=/home/nonroot/data PORT=8080
WORKDIR /home/nonroot
USER nonroot:nonroot
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 CMD ["/usr/local/bin/atl", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/atl"]
