// Package eastguardv1 is the control channel's wire format: the generated
// protobuf and gRPC code for control.proto, and nothing else. Conversions
// between these messages and the internal types live in internal/wire.
//
// The generated files are committed. `make generate` rebuilds them with
// protoc from the system (Debian's protobuf-compiler, libprotoc 3.21.12)
// and the plugin versions pinned as go tools in go.mod.
//
// It must not import anything of the project.
package eastguardv1

//go:generate sh -c "protoc --version | grep -qx 'libprotoc 3.21.12' || { echo 'protoc: want libprotoc 3.21.12 (Debian bookworm protobuf-compiler), got '\"$(protoc --version)\" >&2; exit 1; }"
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative control.proto"
