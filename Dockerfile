# syntax=docker/dockerfile:1
# One image for every Postamt service: `postamt serve mailbox|outbox|tracker|calendar|gateway`
# (the Kubernetes manifests in deploy/k8s pass the service as arguments).
#
#   docker build -t postamt --build-arg VERSION=$(git describe --tags --always) .
#
# The build uses the Go workspace (go.work), so every module the workspace names is copied; the
# module and build caches are BuildKit cache mounts, kept between builds.

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /postamt ./cmd/postamt

# Static, no shell, no package manager; runs as uid/gid 65532 (nonroot), which the manifests'
# securityContext also requires.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /postamt /postamt
USER 65532:65532
# gRPC (GRPC_ADDR), ops: metrics and pprof (OPS_ADDR), the gateway's HTTP/JSON.
EXPOSE 9090 9091 8080
ENTRYPOINT ["/postamt"]
CMD ["help"]
