package flows

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/agent/datapath"
	"github.com/eastguard/eastguard/internal/ruleset"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

var t0 = time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)

func event(sport, dport uint16, v ruleset.Verdict, at time.Duration) *datapath.FlowEvent {
	return &datapath.FlowEvent{
		Time: t0.Add(at), Src: netip.MustParseAddr("10.250.3.2"), Dst: netip.MustParseAddr("10.250.1.2"),
		SrcPort: sport, DstPort: dport, Protocol: ruleset.ProtocolTCP, Endpoint: 1,
		SrcIdentity: 400, DstIdentity: 300, Direction: ruleset.Ingress, Verdict: v, Rule: 7, Length: 60,
	}
}

func TestAggregator(t *testing.T) {
	a := NewAggregator(3)
	// A denied SYN retried three times is one flow; two new flows are two.
	for i := range 3 {
		if full := a.Add(event(40000, 22, ruleset.VerdictDenied, time.Duration(i)*time.Second)); full {
			t.Fatalf("full after %d flows", a.Len())
		}
	}
	a.Add(event(40001, 8080, ruleset.VerdictAllowed, 0))
	if full := a.Add(event(40002, 8080, ruleset.VerdictAllowed, 0)); !full {
		t.Error("not full at 3 flows with max 3")
	}
	flows := a.Flush()
	if len(flows) != 3 || a.Len() != 0 {
		t.Fatalf("flushed %d flows, %d left; want 3, 0", len(flows), a.Len())
	}
	f := flows[0]
	if f.Packets != 3 || f.Bytes != 180 || f.FirstSeen != t0.UnixNano() || f.LastSeen != t0.Add(2*time.Second).UnixNano() {
		t.Errorf("denied flow %+v: want 3 packets, 180 bytes, first and last seen 2 s apart", f)
	}
	rec := f.Record("n1", Names{Rules: func(id ruleset.RuleID) string { return "p/r" }, Workloads: func(a netip.Addr) string { return map[string]string{"10.250.1.2": "web"}[a.String()] }})
	b, _ := json.Marshal(rec)
	for _, want := range []string{`"node":"n1"`, `"direction":"ingress"`, `"protocol":"TCP"`, `"dstPort":22`, `"dstWorkload":"web"`, `"srcWorkload":""`, `"verdict":"denied"`, `"rule":"p/r"`, `"packets":3`, `"firstSeen":"2026-11-23T12:00:00Z"`, `"lastSeen":"2026-11-23T12:00:02Z"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("record %s lacks %s", b, want)
		}
	}
}

func TestICMPRecordAndProto(t *testing.T) {
	ev := event(0, 8<<8, ruleset.VerdictAllowed, 0)
	ev.Protocol = ruleset.ProtocolICMP
	a := NewAggregator(10)
	a.Add(ev)
	f := a.Flush()[0]
	rec := f.Record("n", Names{})
	if rec.DstPort != 0 || rec.ICMPType == nil || *rec.ICMPType != 8 || *rec.ICMPCode != 0 || rec.Protocol != "ICMP" {
		t.Errorf("ICMP record %+v", rec)
	}
	p := f.Proto()
	if p.DstPort != 0 || p.GetIcmpType() != 8 || p.IcmpCode == nil || len(p.SrcAddr) != 4 {
		t.Errorf("ICMP proto %+v", p)
	}
}

func flowsN(n int) []Flow {
	a := NewAggregator(n + 1)
	for i := range n {
		a.Add(event(uint16(30000+i), 22, ruleset.VerdictDenied, 0))
	}
	return a.Flush()
}

func openSpool(t *testing.T, dir string, mem, disk int64) *Spool {
	t.Helper()
	s, err := OpenSpool(SpoolConfig{Dir: dir, MemBytes: mem, DiskBytes: disk, Window: 2})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func next(t *testing.T, s *Spool) *pb.FlowBatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	b, err := s.Next(ctx)
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	return b
}

func noNext(t *testing.T, s *Spool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if b, err := s.Next(ctx); err == nil {
		t.Fatalf("Next gave batch %d, want none", b.Seq)
	}
}

func TestSpoolDelivery(t *testing.T) {
	s := openSpool(t, t.TempDir(), 1<<20, 1<<20)
	for range 4 {
		s.Write(flowsN(2))
	}
	b1, b2 := next(t, s), next(t, s)
	if b1.Seq != 1 || b2.Seq != 2 || b1.SpoolId != s.ID() || len(b1.Records) != 2 {
		t.Fatalf("batches %d, %d: want 1, 2 in order", b1.Seq, b2.Seq)
	}
	noNext(t, s) // window of 2 in flight
	s.Ack(&pb.FlowAck{Seq: 1})
	if b := next(t, s); b.Seq != 3 {
		t.Fatalf("after ack of 1: batch %d, want 3", b.Seq)
	}
	// The stream breaks: 2 and 3 go again, in order.
	s.Reset()
	if b := next(t, s); b.Seq != 2 {
		t.Fatalf("after reset: batch %d, want 2", b.Seq)
	}
	// 2 is refused for good: its records are lost, and the next batch out
	// says so.
	s.Ack(&pb.FlowAck{Seq: 2, Error: "malformed"})
	b3 := next(t, s)
	if b3.Seq != 3 || b3.Lost != 2 {
		t.Fatalf("batch %d lost %d, want 3 carrying 2 lost", b3.Seq, b3.Lost)
	}
	// 3 must wait (store full): it comes back after a second.
	s.Ack(&pb.FlowAck{Seq: 3, Error: "store full", Retry: true})
	if b := next(t, s); b.Seq != 4 {
		t.Fatalf("batch %d, want 4 while 3 waits", b.Seq)
	}
	start := time.Now()
	if b := next(t, s); b.Seq != 3 || time.Since(start) < 500*time.Millisecond {
		t.Fatalf("batch %d after %v, want 3 again after about a second", b.Seq, time.Since(start))
	}
	st := s.Stats()
	if st.RecordsLost != 2 || st.BatchesAcked != 1 || st.BatchesRetried != 1 || st.BatchesQueued != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestSpoolBoundsAndRestart(t *testing.T) {
	dir := t.TempDir()
	one := int64(len(mustMarshal(t, flowsN(50))))
	// Memory for about 2 batches, disk for about 3: 10 batches written,
	// the oldest 5 are dropped and counted, 3 are on disk.
	s := openSpool(t, dir, 2*one+one/2, 3*one+one/2)
	for range 10 {
		if err := s.Write(flowsN(50)); err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	if st.RecordsLost != 5*50 || st.BatchesQueued != 5 {
		t.Fatalf("stats %+v: want 250 records lost, 5 batches kept", st)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.batch"))
	if len(files) != 3 {
		t.Errorf("%d batch files, want 3", len(files))
	}
	if b := next(t, s); b.Seq != 6 || b.Lost != 250 {
		t.Fatalf("first batch out: %d carrying %d lost, want 6 carrying 250", b.Seq, b.Lost)
	}
	// A clean stop puts memory on disk; a restart sends everything again
	// (6 was never acked), with the same spool id and new seqs above.
	id := s.ID()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openSpool(t, dir, 1<<20, 1<<20)
	if s2.ID() != id {
		t.Errorf("spool id changed across restart")
	}
	var seqs []uint64
	for range 5 {
		b := next(t, s2)
		seqs = append(seqs, b.Seq)
		s2.Ack(&pb.FlowAck{Seq: b.Seq})
	}
	if seqs[0] != 6 || seqs[4] != 10 {
		t.Errorf("after restart sent %v, want 6..10", seqs)
	}
	s2.Write(flowsN(1))
	if b := next(t, s2); b.Seq <= 10 {
		t.Errorf("a new batch after restart has seq %d, not above 10", b.Seq)
	}
	os.WriteFile(filepath.Join(dir, "garbage.batch"), []byte("x"), 0o600)
	if _, err := OpenSpool(SpoolConfig{Dir: dir}); err != nil {
		t.Errorf("a stray file breaks the spool: %v", err)
	}
}

func mustMarshal(t *testing.T, flows []Flow) []byte {
	t.Helper()
	var buf bytes.Buffer
	b := &pb.FlowBatch{Seq: 1, SpoolId: 1}
	for i := range flows {
		b.Records = append(b.Records, flows[i].Proto())
	}
	raw, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	buf.Write(raw)
	return buf.Bytes()
}

func TestPipelineFlushesToSinks(t *testing.T) {
	var out bytes.Buffer
	names := func() Names {
		return Names{Rules: func(ruleset.RuleID) string { return "shop/no-ssh" }, Workloads: func(netip.Addr) string { return "" }}
	}
	p := NewPipeline(PipelineConfig{Interval: 20 * time.Millisecond, Sinks: []Sink{NewLineSink(&out, "n1", names)}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- p.Run(ctx) }()
	for i := range 5 {
		ev := event(40000, 22, ruleset.VerdictDenied, time.Duration(i)*time.Millisecond)
		ev.Suppressed = 2
		p.Handle(ev)
	}
	cancel()
	<-done
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], `"packets":5`) || !strings.Contains(lines[0], `"rule":"shop/no-ssh"`) {
		t.Errorf("flow log %q: want one record of 5 packets", out.String())
	}
	if st := p.Stats(); st.Events != 5 || st.Suppressed != 10 || st.Flows != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestSpoolBadFiles: spilled batches that were cut short, have flipped
// bytes or cannot be read are dropped and counted as lost, and the batches
// behind them still go out. (Before: a read error ended the sender for
// good, and a file with a flipped bit was sent as if it were the batch.)
func TestSpoolBadFiles(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(SpoolConfig{Dir: dir, MemBytes: 1, DiskBytes: 1 << 20, Window: 8})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := s.Write(flowsN(3)); err != nil {
			t.Fatal(err)
		}
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.batch"))
	if len(files) != 5 {
		t.Fatalf("%d batch files, want all 5 spilled", len(files))
	}
	// 1: cut short by a byte; 2: its last byte flipped (still decodes as
	// protobuf); 3: gone (a read error); 4 and 5 intact.
	raw, _ := os.ReadFile(files[0])
	os.WriteFile(files[0], raw[:len(raw)-1], 0o600)
	raw, _ = os.ReadFile(files[1])
	raw[len(raw)-1] ^= 1
	os.WriteFile(files[1], raw, 0o600)
	os.Remove(files[2])

	b := next(t, s)
	if b.Seq != 4 || len(b.Records) != 3 || b.Lost != 9 {
		t.Fatalf("first batch out: %d with %d records carrying %d lost; want 4 with 3 carrying 9", b.Seq, len(b.Records), b.Lost)
	}
	if b := next(t, s); b.Seq != 5 || b.Lost != 0 {
		t.Fatalf("second batch out: %d carrying %d lost; want 5 carrying 0", b.Seq, b.Lost)
	}
	if st := s.Stats(); st.RecordsLost != 9 || st.BatchesQueued != 2 {
		t.Errorf("stats %+v: want 9 records lost, 2 batches queued", st)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*.batch")); len(left) != 2 {
		t.Errorf("bad files not removed: %v", left)
	}
}

// TestBatchFileTornAnywhere: a batch file cut at any length, or with any
// one byte changed, is refused, never decoded as a shorter batch.
func TestBatchFileTornAnywhere(t *testing.T) {
	b := &pb.FlowBatch{Seq: 7, SpoolId: 3}
	for _, f := range flowsN(4) {
		b.Records = append(b.Records, f.Proto())
	}
	payload, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	file := encodeBatchFile(payload)
	if got, err := decodeBatchFile(file, 4); err != nil || !proto.Equal(got, b) {
		t.Fatalf("intact file: %v", err)
	}
	for n := range len(file) {
		if _, err := decodeBatchFile(file[:n], 4); err == nil {
			t.Fatalf("file cut to %d of %d bytes decoded", n, len(file))
		}
	}
	for i := range file {
		bad := bytes.Clone(file)
		bad[i] ^= 0x40
		if _, err := decodeBatchFile(bad, 4); err == nil {
			t.Fatalf("file with byte %d changed decoded", i)
		}
	}
	// A file of an older agent (no header) is taken only whole.
	if _, err := decodeBatchFile(payload, 4); err != nil {
		t.Errorf("headerless file of an older agent refused: %v", err)
	}
	if _, err := decodeBatchFile(payload, 5); err == nil {
		t.Errorf("headerless file with fewer records than its name says decoded")
	}
}

// TestSpoolSpillIsAtomic: a spill interrupted by a crash leaves only a
// temporary file, which the next start removes and does not send.
func TestSpoolSpillIsAtomic(t *testing.T) {
	dir := t.TempDir()
	s := openSpool(t, dir, 1, 1<<20)
	if err := s.Write(flowsN(2)); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left after a spill", e.Name())
		}
	}
	tmp := filepath.Join(dir, ".00000000000000000099-2-0.batch.tmp123")
	os.WriteFile(tmp, []byte("half"), 0o600)
	s2 := openSpool(t, dir, 1<<20, 1<<20)
	if b := next(t, s2); b.Seq != 1 {
		t.Errorf("after restart sent %d, want 1", b.Seq)
	}
	noNext(t, s2)
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("interrupted spill %s not removed at start", tmp)
	}
}

// TestRecordNamesLocalEnd: without an address book (an agent with a
// controller), the end of a flow on this node is named after its
// endpoint's workload; an address the book knows keeps its name; a
// spoofed source is not named after the workload that sent it.
func TestRecordNamesLocalEnd(t *testing.T) {
	names := Names{Endpoints: func(id ruleset.EndpointID) string { return map[ruleset.EndpointID]string{1: "web"}[id] }}
	in := event(40000, 8080, ruleset.VerdictAllowed, 0) // ingress at endpoint 1
	out := event(40000, 8080, ruleset.VerdictAllowed, 0)
	out.Direction = ruleset.Egress
	spoofed := event(40000, 8080, ruleset.VerdictDenied, 0)
	spoofed.Direction, spoofed.Reason = ruleset.Egress, datapath.ReasonSpoofed
	noEndpoint := event(40000, 8080, ruleset.VerdictDenied, 0)
	noEndpoint.Endpoint = 0
	for _, tc := range []struct {
		name     string
		ev       *datapath.FlowEvent
		names    Names
		src, dst string
	}{
		{"ingress", in, names, "", "web"},
		{"egress", out, names, "web", ""},
		{"spoofed", spoofed, names, "", ""},
		{"no endpoint", noEndpoint, names, "", ""},
		{"book first", in, Names{Endpoints: names.Endpoints, Workloads: func(a netip.Addr) string {
			return map[string]string{"10.250.3.2": "client", "10.250.1.2": "web-by-address"}[a.String()]
		}}, "client", "web-by-address"},
	} {
		a := NewAggregator(10)
		a.Add(tc.ev)
		f := a.Flush()[0]
		r := f.Record("n1", tc.names)
		if r.SrcWorkload != tc.src || r.DstWorkload != tc.dst {
			t.Errorf("%s: src %q dst %q, want %q %q", tc.name, r.SrcWorkload, r.DstWorkload, tc.src, tc.dst)
		}
	}
}
