package wire

import (
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The "not leader" answer of a standby controller (high availability):
// codes.Unavailable, which agents take as "try the next address", with an
// ErrorInfo detail of this reason and domain that names the leader's
// advertised gRPC address when the standby knows it.
const (
	NotLeaderReason = "NOT_LEADER"
	NotLeaderDomain = "eastguard.dev"
	// NotLeaderKey is the detail's metadata key of the leader's address.
	NotLeaderKey = "leader"
)

// NotLeader is a standby's answer to any call; leader is the leader's
// advertised gRPC address ("" when unknown).
func NotLeader(leader string) error {
	msg := "this controller is a standby, not the leader"
	if leader != "" {
		msg += "; the leader is at " + leader
	}
	st := status.New(codes.Unavailable, msg)
	info := &errdetails.ErrorInfo{Reason: NotLeaderReason, Domain: NotLeaderDomain}
	if leader != "" {
		info.Metadata = map[string]string{NotLeaderKey: leader}
	}
	if withDetail, err := st.WithDetails(info); err == nil {
		st = withDetail
	}
	return st.Err()
}

// IsNotLeader says whether err is a standby's answer, and names the
// leader it gave ("" when none). The leader named is a hint from a peer
// that passed the TLS check, never an address to trust more than the
// configured ones.
func IsNotLeader(err error) (leader string, ok bool) {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return "", false
	}
	st := se.GRPCStatus()
	if st.Code() != codes.Unavailable {
		return "", false
	}
	for _, d := range st.Details() {
		if info, isInfo := d.(*errdetails.ErrorInfo); isInfo && info.GetReason() == NotLeaderReason && info.GetDomain() == NotLeaderDomain {
			return info.GetMetadata()[NotLeaderKey], true
		}
	}
	return "", false
}
