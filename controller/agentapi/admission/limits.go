package admission

// Limits bound what peers of the agent-facing listener can make the
// controller hold or do, most of all before they authenticate (anyone who
// reaches the port may open connections and call Join). Zero fields take
// the defaults.
type Limits struct {
	// MaxConns bounds the listener's open connections, MaxConnsPerSource
	// those from one source (an IPv4 address, or an IPv6 /64: one host
	// commonly holds a whole /64). A connection beyond either is closed as
	// soon as it is accepted.
	MaxConns          int
	MaxConnsPerSource int
	// MaxStreamsPerConn bounds concurrent calls on one connection (HTTP/2
	// SETTINGS_MAX_CONCURRENT_STREAMS; an agent needs one).
	MaxStreamsPerConn int
	// JoinRate and JoinBurst bound the Joins one source may start: a token
	// bucket of JoinBurst tokens refilled at JoinRate per second. Beyond
	// it Join answers ResourceExhausted, which agents retry with backoff.
	JoinRate  float64
	JoinBurst int
}

// Default limits.
const (
	DefaultMaxConns          = 16384
	DefaultMaxConnsPerSource = 64
	DefaultMaxStreamsPerConn = 16
	DefaultJoinRate          = 5
	DefaultJoinBurst         = 20
)

// WithDefaults fills the zero fields.
func (l Limits) WithDefaults() Limits {
	if l.MaxConns <= 0 {
		l.MaxConns = DefaultMaxConns
	}
	if l.MaxConnsPerSource <= 0 {
		l.MaxConnsPerSource = DefaultMaxConnsPerSource
	}
	if l.MaxStreamsPerConn <= 0 {
		l.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if l.JoinRate <= 0 {
		l.JoinRate = DefaultJoinRate
	}
	if l.JoinBurst <= 0 {
		l.JoinBurst = DefaultJoinBurst
	}
	return l
}
