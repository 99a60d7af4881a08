package datapath

import (
	"fmt"

	"github.com/eastguard/eastguard/internal/ruleset"
)

// Counter names one per-CPU datapath counter (enum eg_counter).
type Counter uint32

const (
	CounterEstablished      = Counter(bpfEgCounterEG_CNT_ESTABLISHED)
	CounterRelated          = Counter(bpfEgCounterEG_CNT_RELATED)
	CounterRevalidated      = Counter(bpfEgCounterEG_CNT_REVALIDATED)
	CounterForwarded        = Counter(bpfEgCounterEG_CNT_FORWARDED)
	CounterNeighbor         = Counter(bpfEgCounterEG_CNT_NEIGHBOR)
	CounterNonIP            = Counter(bpfEgCounterEG_CNT_NON_IP)
	CounterFragments        = Counter(bpfEgCounterEG_CNT_FRAGMENTS)
	CounterMalformed        = Counter(bpfEgCounterEG_CNT_MALFORMED)
	CounterSpoofed          = Counter(bpfEgCounterEG_CNT_SPOOFED)
	CounterNoEndpoint       = Counter(bpfEgCounterEG_CNT_NO_ENDPOINT)
	CounterEventsLost       = Counter(bpfEgCounterEG_CNT_EVENTS_LOST)
	CounterEventsSuppressed = Counter(bpfEgCounterEG_CNT_EVENTS_SUPPRESSED)
	CounterCTFull           = Counter(bpfEgCounterEG_CNT_CT_FULL)
	CounterCTEndpointFull   = Counter(bpfEgCounterEG_CNT_CT_ENDPOINT_FULL)
	numCounters             = int(bpfEgCounterEG_CNT_MAX)
)

// VerdictCounter is the counter of a verdict in a direction: new flows
// admitted (allowed), packets dropped (denied) or let through by monitor
// mode (would-deny).
func VerdictCounter(v ruleset.Verdict, d ruleset.Direction) Counter {
	return Counter(bpfEgCounterEG_CNT_ALLOWED_INGRESS) + Counter(v-1)*2 + Counter(d)
}

// counterNames follow enum eg_counter without the EG_CNT_ prefix, lower
// case; TestLayout checks them against the object's BTF.
var counterNames = [numCounters]string{
	"allowed_ingress", "allowed_egress",
	"denied_ingress", "denied_egress",
	"would_deny_ingress", "would_deny_egress",
	"established", "related", "revalidated", "forwarded",
	"neighbor", "non_ip", "fragments", "malformed", "spoofed", "no_endpoint",
	"events_lost", "events_suppressed", "ct_full", "ct_endpoint_full",
}

// String returns the counter's name ("events_lost", "denied_ingress").
func (c Counter) String() string {
	if int(c) < numCounters {
		return counterNames[c]
	}
	return fmt.Sprintf("counter(%d)", uint32(c))
}

// Counters are the datapath counters summed over all CPUs, indexed by
// Counter.
type Counters [numCounters]uint64

// Get returns one counter.
func (c Counters) Get(k Counter) uint64 { return c[k] }

// Counters reads and sums the per-CPU counters.
func (d *Datapath) Counters() (Counters, error) {
	var out Counters
	var perCPU []uint64
	for i := range numCounters {
		if err := d.objs.EgCounters.Lookup(uint32(i), &perCPU); err != nil {
			return out, fmt.Errorf("read eg_counters[%d]: %w", i, err)
		}
		for _, v := range perCPU {
			out[i] += v
		}
	}
	return out, nil
}

// ByName returns the counters keyed by their names, as the agent reports
// them to the controller.
func (c Counters) ByName() map[string]uint64 {
	out := make(map[string]uint64, len(c))
	for i, v := range c {
		out[Counter(i).String()] = v
	}
	return out
}
