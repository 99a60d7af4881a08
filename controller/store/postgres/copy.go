package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	rc "github.com/eastguard/eastguard/controller/store/internal/rowcodec"
	"github.com/eastguard/eastguard/internal/flowrecord"
)

// Flow records go to the server pre-encoded in COPY's binary format:
// each value written straight into one buffer, in the column types of
// migration 1 (BIGINT: int8, INTEGER: int4, TEXT: its bytes), instead
// of a []any of 26 boxed values per row and pgx's per-value encode
// plans, which were most of the Go side's cost of an insert: its CPU
// per record in BenchmarkPostgresIngestSustained fell from 6.4-7.1 µs
// to 2.3 µs.
//
// Invariant: appendFlowRow writes the values of rc.FlowArgs, in
// rc.FlowColumns' order (flowCopyColumns), each as the column's type
// takes it; TestPostgresCopyEncoding reads every field back. The values
// are the same bit patterns FlowArgs gives (uint64 counters as int64,
// times as Unix nanoseconds, addresses as netip's String).

// copyHeader starts binary COPY data: the signature, no flags, no
// header extension.
var copyHeader = []byte("PGCOPY\n\377\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// flowCopyFields is the number of values of a row (flowCopyColumns).
const flowCopyFields = 26

// flowCopySQL is the COPY statement the encoded rows are sent with.
var flowCopySQL = "COPY flows (" + strings.Join(flowCopyColumns, ", ") + ") FROM STDIN (FORMAT binary)"

// copyBufs recycles the encoding buffers (about 250 bytes a record).
var copyBufs = sync.Pool{New: func() any { return new([]byte) }}

func appendInt8(b []byte, v int64) []byte {
	b = binary.BigEndian.AppendUint32(b, 8)
	return binary.BigEndian.AppendUint64(b, uint64(v))
}

func appendInt4(b []byte, v int32) []byte {
	b = binary.BigEndian.AppendUint32(b, 4)
	return binary.BigEndian.AppendUint32(b, uint32(v))
}

func appendText(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

// appendAddr writes an address as its String (an invalid address, which
// validation never lets through, as "invalid IP", as String does).
func appendAddr(b []byte, a interface {
	IsValid() bool
	AppendTo([]byte) []byte
}) []byte {
	if !a.IsValid() {
		return appendText(b, "invalid IP")
	}
	at := len(b)
	b = append(b, 0, 0, 0, 0)
	b = a.AppendTo(b)
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
	return b
}

// appendNullInt4 writes a nullable INTEGER: NULL (length -1) for nil.
func appendNullInt4(b []byte, v *uint8) []byte {
	if v == nil {
		return binary.BigEndian.AppendUint32(b, 0xffffffff)
	}
	return appendInt4(b, int32(*v))
}

// appendFlowRow appends one record as a binary COPY row.
func appendFlowRow(b []byte, r *flowrecord.Record) []byte {
	b = binary.BigEndian.AppendUint16(b, flowCopyFields)
	b = appendInt8(b, r.Time.UnixNano())
	b = appendText(b, r.Node)
	b = appendInt4(b, int32(r.Direction))
	b = appendText(b, r.Protocol)
	b = appendAddr(b, r.SrcAddr)
	b = appendInt4(b, int32(r.SrcPort))
	b = appendText(b, r.SrcWorkload)
	b = appendInt8(b, int64(r.SrcIdentity))
	b = appendAddr(b, r.DstAddr)
	b = appendInt4(b, int32(r.DstPort))
	b = appendText(b, r.DstWorkload)
	b = appendInt8(b, int64(r.DstIdentity))
	b = appendInt4(b, int32(r.Verdict))
	b = appendText(b, r.Rule)
	b = appendInt8(b, int64(r.Packets))
	b = appendInt8(b, int64(r.Bytes))
	b = appendInt8(b, r.FirstSeen.UnixNano())
	b = appendInt8(b, r.LastSeen.UnixNano())
	b = appendNullInt4(b, r.ICMPType)
	b = appendNullInt4(b, r.ICMPCode)
	b = appendText(b, r.Reason)
	b = appendInt8(b, int64(r.PacketsSent))
	b = appendInt8(b, int64(r.PacketsReceived))
	b = appendInt8(b, int64(r.BytesSent))
	b = appendInt8(b, int64(r.BytesReceived))
	return appendText(b, string(rc.StateOrNew(r.State)))
}

// copyFlows sends recs to the flows table in one binary COPY on tx's
// connection.
func copyFlows(ctx context.Context, tx pgx.Tx, recs []flowrecord.Record) error {
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	b := append((*buf)[:0], copyHeader...)
	for i := range recs {
		b = appendFlowRow(b, &recs[i])
	}
	b = binary.BigEndian.AppendUint16(b, 0xffff) // the trailer
	*buf = b
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b), flowCopySQL)
	if err != nil {
		return err
	}
	if n := tag.RowsAffected(); n != int64(len(recs)) {
		return fmt.Errorf("COPY stored %d of %d flows", n, len(recs))
	}
	return nil
}
