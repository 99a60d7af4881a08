package wire

import (
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFailoverNotLeaderStatus(t *testing.T) {
	err := NotLeader("10.0.0.2:7443")
	if status.Code(err) != codes.Unavailable {
		t.Errorf("code %v", status.Code(err))
	}
	if l, ok := IsNotLeader(fmt.Errorf("stream: %w", err)); !ok || l != "10.0.0.2:7443" {
		t.Errorf("wrapped: %q, %v", l, ok)
	}
	if l, ok := IsNotLeader(NotLeader("")); !ok || l != "" {
		t.Errorf("no leader known: %q, %v", l, ok)
	}
	for _, other := range []error{errors.New("not leader"), status.Error(codes.Unavailable, "this controller is a standby, not the leader"),
		status.Error(codes.PermissionDenied, "revoked")} {
		if _, ok := IsNotLeader(other); ok {
			t.Errorf("%v taken for a standby's answer", other)
		}
	}
}
