package agentapi

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/eastguard/eastguard/controller/agentapi/agenttls"
	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// sentStream records what a session sends.
type sentStream struct {
	pb.Control_ConnectServer
	sent []*pb.ControllerMessage
}

func (f *sentStream) Send(m *pb.ControllerMessage) error {
	f.sent = append(f.sent, m)
	return nil
}

// TestHeartbeatClosesRevokedStream: every heartbeat checks the stream's
// certificate against the revocations, not only its expiry, so no stream
// outlives a revocation by more than one heartbeat, whatever path it took.
func TestHeartbeatClosesRevokedStream(t *testing.T) {
	ca, _, err := pki.NewCA(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, _, _ := pki.NewNodeKey()
	csr, _ := pki.NewCSR(key, "node-a")
	leaf, _, err := ca.SignNode(csr, "node-a", time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{cfg: Config{Heartbeat: time.Second}, log: zap.NewNop(), now: time.Now, m: newMetrics(nil)}
	if s.tls, err = agenttls.New(agenttls.Config{CA: ca, Hosts: func() []string { return []string{"localhost"} }, TTL: time.Hour,
		Now: time.Now, Log: zap.NewNop()}); err != nil {
		t.Fatal(err)
	}
	stream := &sentStream{}
	ss := &session{s: s, node: "node-a", serial: pki.Serial(leaf), stream: stream,
		peerHeartbeat: time.Second, done: make(chan struct{}), lastRecv: time.Now()}
	ss.certExpiry.Store(leaf.NotAfter.UnixNano())

	if err := ss.heartbeat(); err != nil || len(stream.sent) != 1 || stream.sent[0].GetHeartbeat() == nil {
		t.Fatalf("heartbeat of a valid stream: %v, sent %v", err, stream.sent)
	}
	revoke(s.tls, []store.Cert{{Serial: pki.Serial(leaf), Node: "node-a", NotAfter: leaf.NotAfter, Revoked: time.Now()}})
	err = ss.heartbeat()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("heartbeat after the revocation: %v, want PermissionDenied saying revoked", err)
	}
	if last := stream.sent[len(stream.sent)-1]; last.GetRevocation() == nil || last.GetRevocation().GetSerials()[0] != pki.Serial(leaf) {
		t.Errorf("last message sent: %v, want the Revocation naming the certificate", last)
	}
}
