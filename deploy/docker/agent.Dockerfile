# eastguard/agent: `make images`. The eBPF object is committed, so the build
# needs no clang.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -o /out/eastguard-agent ./agent/cmd/eastguard-agent

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/eastguard-agent /usr/local/bin/eastguard-agent
ENTRYPOINT ["/usr/local/bin/eastguard-agent"]
