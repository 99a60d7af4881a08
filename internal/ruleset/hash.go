package ruleset

import (
	"crypto/sha256"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"hash"
	"slices"
	"strconv"
	"sync"
)

// Hash returns a content hash of the rule set ("sha256:<hex>"), independent
// of Version and of the order of its slices.
//
// The hash is SHA-256 over the JSON encoding (encoding/json) of the
// canonical rule set with Version 0 and empty slices as null. Hashes are
// stored by agents and the controller, so those bytes must never change:
// they are produced here by a direct encoder (a rule set of millions of
// entries spends most of its hashing time in reflection otherwise), which
// TestHashEncoderMatchesJSON checks byte for byte against json.Marshal.
// An already canonical rule set is encoded in place, without a copy.
func (rs *RuleSet) Hash() string {
	h, _ := rs.HashFrom(nil)
	return h
}

// HashPart is what hashing a rule set learnt of its node, endpoints and
// ipcache (the first fields the hash encodes): those, and the SHA-256
// state after them. A node's next version mostly keeps them (a change of
// ports or rules leaves its addresses alone), and is hashed from that
// state by encoding only its entries and rules (HashFrom): at 10,000
// nodes, the ipcache's text was most of an apply's hashing. Immutable;
// it refers to the slices of the rule set it was taken from, which must
// not change afterwards (a published version's do not).
type HashPart struct {
	node      string
	endpoints []Endpoint
	ipcache   []IPCacheEntry
	state     []byte // sha256's MarshalBinary after the ipcache
}

// HashFrom is Hash, resumed from prev (may be nil) when rs has the same
// node, endpoints and ipcache as the rule set prev was taken from; the
// hash is the same either way (TestHashFromMatchesHash). It also returns
// rs's own part, for its next version: nil when rs was not canonical
// (the hash was of a canonical copy, which a part must not keep alive).
func (rs *RuleSet) HashFrom(prev *HashPart) (string, *HashPart) {
	h := sha256.New()
	if prev.matches(rs) && entriesCanonical(rs.Entries) && rulesCanonical(rs.Rules) {
		// prev's fields were canonical, and rs's equal them element by
		// element: rs is canonical, and its encoding starts as prev's.
		if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(prev.state); err == nil {
			if err := encodeParts(h, rs, (*hashEncoder).tail); err == nil {
				// rs's own part, not prev: prev keeps the earlier rule
				// set's slices alive, which its holder may drop.
				return hashString(h), &HashPart{node: rs.Node, endpoints: rs.Endpoints, ipcache: rs.IPCache, state: prev.state}
			}
			h.Reset()
		}
	}
	c := rs
	if !rs.isCanonical() {
		c = rs.Clone()
		c.Canonicalize()
	}
	var state []byte
	err := encodeParts(h, c, (*hashEncoder).head)
	if err == nil {
		state, _ = h.(encoding.BinaryMarshaler).MarshalBinary() // sha256's never fails
		err = encodeParts(h, c, (*hashEncoder).tail)
	}
	if err != nil {
		// Only invalid enum values fail to encode; hash what we can so the
		// caller still gets a value that differs from every valid set.
		h.Reset()
		h.Write([]byte(err.Error()))
		return hashString(h), nil
	}
	if c != rs || state == nil {
		return hashString(h), nil
	}
	return hashString(h), &HashPart{node: rs.Node, endpoints: rs.Endpoints, ipcache: rs.IPCache, state: state}
}

func hashString(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

// matches reports whether rs has the node, endpoints and ipcache p was
// taken from (false for a nil p). Comparing is far cheaper than encoding.
func (p *HashPart) matches(rs *RuleSet) bool {
	return p != nil && p.node == rs.Node && slices.Equal(p.ipcache, rs.IPCache) &&
		slices.EqualFunc(p.endpoints, rs.Endpoints, Endpoint.Equal)
}

func rulesCanonical(rules []RuleName) bool {
	return slices.IsSortedFunc(rules, func(a, b RuleName) int { return cmpInt(a.ID, b.ID) })
}

// isCanonical reports whether Canonicalize would change nothing.
func (rs *RuleSet) isCanonical() bool {
	return slices.IsSortedFunc(rs.Endpoints, func(a, b Endpoint) int { return cmpInt(a.ID, b.ID) }) &&
		slices.IsSortedFunc(rs.IPCache, compareIPCache) &&
		rulesCanonical(rs.Rules) &&
		entriesCanonical(rs.Entries)
}

func entriesCanonical(es []Entry) bool {
	for i := 1; i < len(es); i++ {
		if CompareEntries(es[i-1], es[i]) >= 0 { // out of order, or a duplicate
			return false
		}
	}
	return true
}

func cmpInt[T ~uint32](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// encodeCanonical writes exactly what json.Marshal would write for rs with
// Version 0 and empty slices nil.
func encodeCanonical(h hash.Hash, rs *RuleSet) error {
	return encodeParts(h, rs, (*hashEncoder).head, (*hashEncoder).tail)
}

// encodeParts writes parts of encodeCanonical's JSON of rs to h, in
// order, through a pooled buffer: head, tail or both (HashFrom writes the
// head, keeps the hash state, then writes the tail).
func encodeParts(h hash.Hash, rs *RuleSet, parts ...func(*hashEncoder, *RuleSet) error) error {
	bp := hashBufs.Get().(*[]byte)
	defer hashBufs.Put(bp)
	e := &hashEncoder{h: h, buf: (*bp)[:0]}
	defer func() {
		if cap(e.buf) <= 64<<10 { // a long name grew it: not kept
			*bp = e.buf[:0]
		}
	}()
	for _, part := range parts {
		if err := part(e, rs); err != nil {
			return err
		}
	}
	e.flush()
	return nil
}

// head encodes the node, the endpoints and the ipcache.
func (e *hashEncoder) head(rs *RuleSet) error {
	e.raw(`{"node":`)
	e.str(rs.Node)
	e.raw(`,"endpoints":`)
	if len(rs.Endpoints) == 0 {
		e.raw("null")
	} else {
		for i, ep := range rs.Endpoints {
			e.sep(i)
			e.raw(`{"id":`)
			e.uint(uint64(ep.ID))
			e.raw(`,"workload":`)
			e.str(ep.Workload)
			if ep.Interface != "" {
				e.raw(`,"interface":`)
				e.str(ep.Interface)
			}
			if len(ep.Addresses) > 0 {
				e.raw(`,"addresses":`)
				for j, a := range ep.Addresses {
					e.sep(j)
					e.str(a.String())
				}
				e.raw("]")
			}
			e.raw(`,"identity":`)
			e.uint(uint64(ep.Identity))
			e.raw(`,"mode":`)
			if err := e.text(ep.Mode); err != nil {
				return err
			}
			e.raw("}")
		}
		e.raw("]")
	}
	e.raw(`,"ipcache":`)
	if len(rs.IPCache) == 0 {
		e.raw("null")
	} else {
		for i, c := range rs.IPCache {
			e.sep(i)
			e.raw(`{"prefix":"`)
			e.buf = c.Prefix.AppendTo(e.buf)
			e.raw(`","identity":`)
			e.uint(uint64(c.Identity))
			e.raw("}")
		}
		e.raw("]")
	}
	return nil
}

// tail encodes the entries and the rules, and ends the object.
func (e *hashEncoder) tail(rs *RuleSet) error {
	e.raw(`,"entries":`)
	if len(rs.Entries) == 0 {
		e.raw("null")
	} else {
		for i, en := range rs.Entries {
			e.sep(i)
			if err := e.entry(&en); err != nil {
				return err
			}
		}
		e.raw("]")
	}
	e.raw(`,"rules":`)
	if len(rs.Rules) == 0 {
		e.raw("null")
	} else {
		for i, r := range rs.Rules {
			e.sep(i)
			e.raw(`{"id":`)
			e.uint(uint64(r.ID))
			e.raw(`,"name":`)
			e.str(r.Name)
			e.raw("}")
		}
		e.raw("]")
	}
	e.raw("}")
	return nil
}

// hashBufs holds the encoders' buffers: an apply hashes every changed
// node's rule set (10,000 at fleet scale), each through a buffer of 4 KB
// that was garbage right after.
var hashBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

type hashEncoder struct {
	h   hash.Hash
	buf []byte
}

func (e *hashEncoder) raw(s string) { e.buf = append(e.buf, s...); e.maybeFlush() }

func (e *hashEncoder) uint(v uint64) { e.buf = strconv.AppendUint(e.buf, v, 10) }

// str encodes a string as encoding/json does (HTML-safe escaping, invalid
// UTF-8 replaced); names are few, so json.Marshal itself is used.
func (e *hashEncoder) str(s string) {
	b, _ := json.Marshal(s) // a string always marshals
	e.buf = append(e.buf, b...)
}

// text writes an enum as its MarshalText does, without allocating: the
// names are constants, and invalid values fail as MarshalText fails.
func (e *hashEncoder) text(m interface {
	MarshalText() ([]byte, error)
	String() string
}) error {
	if !validEnum(m) {
		_, err := m.MarshalText()
		return err
	}
	e.buf = append(e.buf, '"')
	e.buf = append(e.buf, m.String()...) // enum names need no escaping
	e.buf = append(e.buf, '"')
	return nil
}

func validEnum(m any) bool {
	switch v := m.(type) {
	case Direction:
		return v <= Egress
	case Mode:
		return v <= ModeMonitor
	case Verdict:
		return v >= VerdictAllowed && v <= VerdictWouldDeny
	case Protocol:
		_, ok := protocolNames[v]
		return ok
	}
	return false
}

// sep opens an array (i == 0) or separates its elements.
func (e *hashEncoder) sep(i int) {
	if i == 0 {
		e.buf = append(e.buf, '[')
	} else {
		e.buf = append(e.buf, ',')
	}
}

func (e *hashEncoder) entry(en *Entry) error {
	e.raw(`{"endpoint":`)
	e.uint(uint64(en.Endpoint))
	e.raw(`,"direction":`)
	if err := e.text(en.Direction); err != nil {
		return err
	}
	e.raw(`,"peer":`)
	e.uint(uint64(en.Peer))
	e.raw(`,"protocol":`)
	if err := e.text(en.Protocol); err != nil {
		return err
	}
	if en.Port != 0 {
		e.raw(`,"port":`)
		e.uint(uint64(en.Port))
	}
	if en.EndPort != 0 {
		e.raw(`,"endPort":`)
		e.uint(uint64(en.EndPort))
	}
	if en.ICMPType != nil {
		e.raw(`,"icmpType":`)
		e.uint(uint64(*en.ICMPType))
	}
	if en.ICMPCode != nil {
		e.raw(`,"icmpCode":`)
		e.uint(uint64(*en.ICMPCode))
	}
	e.raw(`,"verdict":`)
	if err := e.text(en.Verdict); err != nil {
		return err
	}
	e.raw(`,"rule":`)
	e.uint(uint64(en.Rule))
	e.raw("}")
	return nil
}

func (e *hashEncoder) maybeFlush() {
	if len(e.buf) > 3072 {
		e.flush()
	}
}

func (e *hashEncoder) flush() {
	e.h.Write(e.buf)
	e.buf = e.buf[:0]
}
