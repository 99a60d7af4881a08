package flows

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/eastguard/eastguard/internal/fsutil"
	pb "github.com/eastguard/eastguard/proto/eastguard/v1"
)

// Spool holds flow batches until the controller acknowledges them.
//
// Policy when the controller is slow or away (bounded, never silent):
//   - batches wait in memory up to MemBytes;
//   - beyond that the oldest are written to disk, up to DiskBytes;
//   - beyond that the oldest batches are dropped, their records counted as
//     lost, and the count travels in the next batch sent (FlowBatch.lost)
//     and in the agent's metrics.
//
// Delivery is at least once per batch and exactly once per stored batch:
// each batch has a sequence number within this spool (spool_id, random,
// kept with the spool), and the controller ignores one it already stored.
// Batches on disk survive an agent restart, and Close puts the ones in
// memory there too.
type Spool struct {
	dir      string
	id       uint64
	memLimit int64
	dskLimit int64
	window   int // batches sent and not yet acknowledged, at most
	log      *zap.Logger

	mu       sync.Mutex
	wake     chan struct{} // signalled when something may be sendable
	queue    []*spoolEntry // oldest first, acked ones removed
	nextSeq  uint64
	reserved uint64 // seqs up to this are recorded on disk as used
	memBytes int64
	dskBytes int64
	lost     uint64 // records dropped, not yet reported in a batch
	stats    SpoolStats
}

// SpoolStats are the spool's counters, for metrics.
type SpoolStats struct {
	BatchesQueued  int
	MemoryBytes    int64
	DiskBytes      int64
	RecordsLost    uint64 // dropped for lack of room, or rejected as malformed
	BatchesAcked   uint64
	BatchesRetried uint64
}

type spoolEntry struct {
	seq       uint64
	records   int
	lost      uint64 // FlowBatch.lost carried
	size      int64
	batch     *pb.FlowBatch // nil when on disk
	path      string        // set when on disk
	sent      bool
	notBefore time.Time // after a retry answer
}

// SpoolConfig configures a spool. Zero values take the defaults.
type SpoolConfig struct {
	Dir       string
	MemBytes  int64 // default 8 MiB
	DiskBytes int64 // default 256 MiB
	Window    int   // default 8
	Log       *zap.Logger
}

const seqReserve = 1024 // seqs are recorded as used in blocks

// OpenSpool opens (or creates) the spool in cfg.Dir, taking back the
// batches an earlier run left on disk.
func OpenSpool(cfg SpoolConfig) (*Spool, error) {
	if cfg.MemBytes <= 0 {
		cfg.MemBytes = 8 << 20
	}
	if cfg.DiskBytes <= 0 {
		cfg.DiskBytes = 256 << 20
	}
	if cfg.Window <= 0 {
		cfg.Window = 8
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("flow spool: %w", err)
	}
	s := &Spool{dir: cfg.Dir, memLimit: cfg.MemBytes, dskLimit: cfg.DiskBytes, window: cfg.Window,
		log: cfg.Log, wake: make(chan struct{}, 1)}
	var err error
	if s.id, err = s.loadID(); err != nil {
		return nil, err
	}
	if s.reserved, err = s.readUint("seq"); err != nil {
		return nil, err
	}
	s.nextSeq = s.reserved + 1
	if err := s.loadBatches(); err != nil {
		return nil, err
	}
	if err := s.reserve(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Spool) loadID() (uint64, error) {
	id, err := s.readUint("id")
	if err != nil || id != 0 {
		return id, err
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return 0, err
	}
	id = binary.LittleEndian.Uint64(b[:]) | 1
	return id, s.writeUint("id", id)
}

func (s *Spool) readUint(name string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(s.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("flow spool: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("flow spool: %s: %w", filepath.Join(s.dir, name), err)
	}
	return v, nil
}

func (s *Spool) writeUint(name string, v uint64) error {
	return fsutil.WriteFileAtomic(filepath.Join(s.dir, name), []byte(strconv.FormatUint(v, 10)+"\n"), 0o600)
}

// reserve records that seqs up to nextSeq+seqReserve may be used, so a
// restart never reuses one. Called with s.mu held (or before use).
func (s *Spool) reserve() error {
	if s.nextSeq+1 <= s.reserved {
		return nil
	}
	r := s.nextSeq + seqReserve
	if err := s.writeUint("seq", r); err != nil {
		return err
	}
	s.reserved = r
	return nil
}

// Batch files are named <seq>-<records>-<lost>.batch.
func batchName(e *spoolEntry) string {
	return fmt.Sprintf("%020d-%d-%d.batch", e.seq, e.records, e.lost)
}

// A batch file is a header, then the FlowBatch in protobuf:
//
//	"EGB1" | payload length (uint32 LE) | CRC-32C of the payload (uint32 LE)
//
// Files are written whole (temporary file, fsync, rename), so a crash
// leaves no file or a whole one; the header makes anything else (a file
// cut short by a full disk, bytes flipped on the medium) detectable
// instead of decoding as a shorter batch, which protobuf would happily do.
// Files without the header (written by an older agent) are accepted only
// if they decode to exactly the number of records their name says.
var batchMagic = [4]byte{'E', 'G', 'B', '1'}

const batchHeaderLen = 12

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errCorrupt says a batch file is not what was written.
var errCorrupt = errors.New("corrupt batch file")

func encodeBatchFile(payload []byte) []byte {
	b := make([]byte, batchHeaderLen, batchHeaderLen+len(payload))
	copy(b, batchMagic[:])
	binary.LittleEndian.PutUint32(b[4:], uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[8:], crc32.Checksum(payload, castagnoli))
	return append(b, payload...)
}

// decodeBatchFile checks and decodes a batch file's content; records is
// the count its name promises.
func decodeBatchFile(raw []byte, records int) (*pb.FlowBatch, error) {
	payload := raw
	if len(raw) >= 4 && [4]byte(raw[:4]) == batchMagic {
		if len(raw) < batchHeaderLen {
			return nil, fmt.Errorf("%w: %d bytes, shorter than its header", errCorrupt, len(raw))
		}
		n, sum := binary.LittleEndian.Uint32(raw[4:]), binary.LittleEndian.Uint32(raw[8:])
		payload = raw[batchHeaderLen:]
		if uint64(len(payload)) != uint64(n) {
			return nil, fmt.Errorf("%w: %d bytes of batch, the header says %d (cut short or extended)", errCorrupt, len(payload), n)
		}
		if got := crc32.Checksum(payload, castagnoli); got != sum {
			return nil, fmt.Errorf("%w: checksum %08x, the header says %08x", errCorrupt, got, sum)
		}
	}
	b := &pb.FlowBatch{}
	if err := proto.Unmarshal(payload, b); err != nil {
		return nil, fmt.Errorf("%w: %w", errCorrupt, err)
	}
	if len(b.Records) != records {
		return nil, fmt.Errorf("%w: %d records, its name says %d", errCorrupt, len(b.Records), records)
	}
	return b, nil
}

func (s *Spool) loadBatches() error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("flow spool: %w", err)
	}
	for _, de := range entries {
		if strings.HasPrefix(de.Name(), ".") && strings.Contains(de.Name(), ".batch.tmp") {
			// A spill interrupted by a crash: never renamed, never counted.
			os.Remove(filepath.Join(s.dir, de.Name()))
			continue
		}
		name, ok := strings.CutSuffix(de.Name(), ".batch")
		if !ok {
			continue
		}
		var seq, lost uint64
		var records int
		if _, err := fmt.Sscanf(name, "%d-%d-%d", &seq, &records, &lost); err != nil {
			s.log.Warn("ignoring a file in the flow spool", zap.String("file", de.Name()))
			continue
		}
		info, err := de.Info()
		if err != nil {
			return err
		}
		s.queue = append(s.queue, &spoolEntry{seq: seq, records: records, lost: lost, size: info.Size(), path: filepath.Join(s.dir, de.Name())})
		s.dskBytes += info.Size()
		s.nextSeq = max(s.nextSeq, seq+1)
	}
	slices.SortFunc(s.queue, func(a, b *spoolEntry) int { return cmp.Compare(a.seq, b.seq) })
	if len(s.queue) > 0 {
		s.log.Info("flow batches left by an earlier run will be sent", zap.Int("batches", len(s.queue)))
	}
	return nil
}

// ID returns the spool's id (FlowBatch.spool_id).
func (s *Spool) ID() uint64 { return s.id }

// Write queues flows as one batch. It never blocks on the controller.
func (s *Spool) Write(flows []Flow) error {
	if len(flows) == 0 {
		return nil
	}
	b := &pb.FlowBatch{Records: make([]*pb.FlowRecord, len(flows)), SpoolId: s.id}
	for i := range flows {
		b.Records[i] = flows[i].Proto()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b.Seq = s.nextSeq
	s.nextSeq++
	if err := s.reserve(); err != nil {
		return err
	}
	e := &spoolEntry{seq: b.Seq, records: len(flows), batch: b, size: int64(proto.Size(b))}
	s.queue = append(s.queue, e)
	s.memBytes += e.size
	s.enforceLimits()
	s.signal()
	return nil
}

// enforceLimits spills the oldest batches to disk, then drops the oldest
// from disk, until both budgets hold. Called with s.mu held.
func (s *Spool) enforceLimits() {
	for _, e := range s.queue {
		if s.memBytes <= s.memLimit {
			break
		}
		if e.batch == nil {
			continue
		}
		if err := s.spill(e); err != nil {
			// No disk: keep it in memory rather than lose it; the drop
			// below still bounds the total.
			s.log.Error("flow spool: writing to disk failed", zap.Error(err))
			break
		}
	}
	for len(s.queue) > 0 && s.memBytes+s.dskBytes > s.memLimit+s.dskLimit {
		e := s.queue[0]
		s.queue = s.queue[1:]
		s.forget(e)
		s.lost += uint64(e.records) + e.lost
		s.stats.RecordsLost += uint64(e.records)
		s.log.Warn("flow spool full: oldest batch dropped", zap.Uint64("seq", e.seq), zap.Int("records", e.records))
	}
}

// spill writes an entry's batch to disk, atomically: after a crash its
// file is there whole or not at all.
func (s *Spool) spill(e *spoolEntry) error {
	payload, err := proto.Marshal(e.batch)
	if err != nil {
		return err
	}
	b := encodeBatchFile(payload)
	path := filepath.Join(s.dir, batchName(e))
	if err := fsutil.WriteFileAtomic(path, b, 0o600); err != nil {
		return err
	}
	e.batch, e.path = nil, path
	s.memBytes -= e.size
	e.size = int64(len(b))
	s.dskBytes += e.size
	return nil
}

// forget releases an entry's memory or file. Called with s.mu held.
func (s *Spool) forget(e *spoolEntry) {
	if e.path != "" {
		os.Remove(e.path)
		s.dskBytes -= e.size
	} else {
		s.memBytes -= e.size
	}
}

func (s *Spool) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Next returns the next batch to send: the oldest not sent yet, once fewer
// than Window batches await their acknowledgement. It blocks until there
// is one or ctx is done; its only error is ctx's.
func (s *Spool) Next(ctx context.Context) (*pb.FlowBatch, error) {
	for {
		s.mu.Lock()
		b, wait := s.next()
		s.mu.Unlock()
		if b != nil {
			return b, nil
		}
		var timer <-chan time.Time
		if wait > 0 {
			timer = time.After(wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.wake:
		case <-timer:
		}
	}
}

// next picks a sendable batch. Called with s.mu held. wait > 0 says when a
// retried batch becomes sendable. A batch file that cannot be read or is
// corrupt is dropped and its records counted as lost: one bad file must
// not stop the batches behind it.
func (s *Spool) next() (*pb.FlowBatch, time.Duration) {
	inflight := 0
	var wait time.Duration
	now := time.Now()
	for i := 0; i < len(s.queue); i++ {
		e := s.queue[i]
		if e.sent {
			inflight++
			continue
		}
		if inflight >= s.window {
			return nil, 0
		}
		if d := e.notBefore.Sub(now); d > 0 {
			if wait == 0 || d < wait {
				wait = d
			}
			continue
		}
		b := e.batch
		if b == nil {
			var err error
			if b, err = s.read(e); err != nil {
				s.log.Error("flow spool: unreadable batch dropped; its records are counted as lost",
					zap.String("file", e.path), zap.Uint64("seq", e.seq), zap.Int("records", e.records), zap.Error(err))
				s.remove(e.seq)
				s.lost += uint64(e.records) + e.lost
				s.stats.RecordsLost += uint64(e.records)
				i-- // the queue moved up by one
				continue
			}
		}
		e.sent = true
		// Losses go out with the first batch that leaves after them.
		b.Lost = e.lost + s.lost
		e.lost, s.lost = b.Lost, 0
		return b, 0
	}
	return nil, wait
}

// read loads a spilled batch and checks it is the one written.
func (s *Spool) read(e *spoolEntry) (*pb.FlowBatch, error) {
	raw, err := os.ReadFile(e.path)
	if err != nil {
		return nil, err
	}
	b, err := decodeBatchFile(raw, e.records)
	if err != nil {
		return nil, err
	}
	if b.GetSeq() != e.seq {
		return nil, fmt.Errorf("%w: it holds batch %d, its name says %d", errCorrupt, b.GetSeq(), e.seq)
	}
	return b, nil
}

// Ack handles the controller's answer to a batch.
func (s *Spool) Ack(a *pb.FlowAck) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.queue, func(e *spoolEntry) bool { return e.seq == a.GetSeq() })
	if i < 0 {
		return // already dropped for room, or answered twice
	}
	e := s.queue[i]
	switch {
	case a.GetError() == "":
		s.remove(e.seq)
		s.stats.BatchesAcked++
	case a.GetRetry():
		e.sent = false
		e.notBefore = time.Now().Add(time.Second)
		s.stats.BatchesRetried++
		s.log.Warn("the controller will take the flow batch later", zap.Uint64("seq", e.seq), zap.String("reason", a.GetError()))
	default:
		s.remove(e.seq)
		s.lost += uint64(e.records) + e.lost
		s.stats.RecordsLost += uint64(e.records)
		s.log.Error("the controller refused a flow batch; its records are counted as lost",
			zap.Uint64("seq", e.seq), zap.Int("records", e.records), zap.String("reason", a.GetError()))
	}
	s.signal()
}

func (s *Spool) remove(seq uint64) {
	i := slices.IndexFunc(s.queue, func(e *spoolEntry) bool { return e.seq == seq })
	if i < 0 {
		return
	}
	s.forget(s.queue[i])
	s.queue = slices.Delete(s.queue, i, i+1)
}

// Reset is called when a stream ends: batches sent on it and not
// acknowledged are sent again on the next one.
func (s *Spool) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.queue {
		e.sent = false
	}
	s.signal()
}

// Close writes the batches still in memory to disk, so a clean stop loses
// nothing; the next OpenSpool takes them back. (A crash loses what was
// only in memory: at most MemBytes.)
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, e := range s.queue {
		if e.batch != nil {
			if err := s.spill(e); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Stats returns the spool's counters.
func (s *Spool) Stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.BatchesQueued, st.MemoryBytes, st.DiskBytes = len(s.queue), s.memBytes, s.dskBytes
	return st
}

// Proto converts a flow for the wire.
func (f *Flow) Proto() *pb.FlowRecord {
	r := &pb.FlowRecord{
		TimeUnixNano:      f.time(),
		Direction:         uint32(f.Dir),
		Protocol:          uint32(f.Protocol),
		SrcAddr:           f.Src.AsSlice(),
		SrcPort:           uint32(f.SrcPort),
		SrcIdentity:       uint32(f.SrcIdentity),
		DstAddr:           f.Dst.AsSlice(),
		DstPort:           uint32(f.DstPort),
		DstIdentity:       uint32(f.DstIdentity),
		Verdict:           uint32(f.Verdict),
		Rule:              uint32(f.Rule),
		Packets:           f.Packets,
		Bytes:             f.Bytes,
		FirstSeenUnixNano: f.FirstSeen,
		LastSeenUnixNano:  f.LastSeen,
		PacketsSent:       f.PacketsSent,
		PacketsReceived:   f.PacketsReceived,
		BytesSent:         f.BytesSent,
		BytesReceived:     f.BytesReceived,
		State:             uint32(f.State),
	}
	if f.Protocol.IsICMP() {
		typ, code := uint32(f.DstPort>>8), uint32(f.DstPort&0xff)
		r.IcmpType, r.IcmpCode = &typ, &code
		r.DstPort = 0
	}
	if f.Reason != 0 {
		r.Reason = f.Reason.String()
	}
	return r
}
