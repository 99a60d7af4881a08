package enforcer

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/agent/datapath"
)

// Defaults of DriftConfig.
const (
	// DefaultDriftInterval is the cheap check's period: a link detached
	// by hand is back within it (plus the check's own few milliseconds),
	// well within 2 s.
	DefaultDriftInterval = time.Second
	// DefaultFullDriftInterval is the full check's: every map entry
	// compared, and the pins.
	DefaultFullDriftInterval = 30 * time.Second
	// minCheckGap bounds how often checks run on request (interface
	// events): a process flapping interfaces gets at most one check per
	// gap, so neither the checks nor their repairs outrun it.
	minCheckGap = 100 * time.Millisecond
	// driftLogBurst is how many findings of one kind are logged per
	// driftLogPeriod; beyond, one line per period says how many more.
	driftLogBurst  = 5
	driftLogPeriod = time.Minute
)

// DriftConfig says how the agent watches its datapath for changes it did
// not make. Zero durations take the defaults.
type DriftConfig struct {
	Interval     time.Duration
	FullInterval time.Duration
	// Repair puts back what drifted; false only reports (--repair=false).
	Repair bool
	// OnDrift is told about every finding, after it was logged (metrics,
	// the controller). OnCheck about every check's duration. Neither may
	// block.
	OnDrift func(datapath.Drift)
	OnCheck func(full bool, d time.Duration)
}

// WatchDrift checks the datapath every cfg.Interval, fully every
// cfg.FullInterval, and whenever the datapath asks (an interface changed),
// until ctx is done. Each finding is logged (at most driftLogBurst per
// kind a minute, then counted), and given to cfg.OnDrift.
//
// Repairs are as frequent as checks, never more: one per finding per
// check. A repair that fails is retried at the next check; meanwhile the
// node is not enforcing as it should, and the log, the metric and the
// controller's alert say so (datapath.Check never opens anything itself).
func (e *Enforcer) WatchDrift(ctx context.Context, cfg DriftConfig) {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultDriftInterval
	}
	if cfg.FullInterval <= 0 {
		cfg.FullInterval = DefaultFullDriftInterval
	}
	tick := time.NewTicker(cfg.Interval)
	defer tick.Stop()
	logs := newDriftLog(e.log)
	var lastFull, last time.Time // the first check is a full one
	requests := e.dp.CheckRequests()
	run := func() {
		full := time.Since(lastFull) >= cfg.FullInterval
		start := time.Now()
		ds, err := e.dp.Check(datapath.CheckOptions{Full: full, Repair: cfg.Repair})
		took := time.Since(start)
		last = start
		if full {
			lastFull = start
		}
		if cfg.OnCheck != nil {
			cfg.OnCheck(full, took)
		}
		if err != nil {
			e.log.Error("datapath drift check could not read everything; the next check tries again", zap.Error(err))
		}
		for _, d := range ds {
			logs.note(d, cfg.Repair, start)
			if cfg.OnDrift != nil {
				cfg.OnDrift(d)
			}
		}
		logs.flush(start)
	}
	run() // at once, in full: whatever changed while the agent was stopped
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			run()
		case <-requests:
			if wait := minCheckGap - time.Since(last); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			run()
		}
	}
}

// driftLog bounds the log lines of drift findings per kind.
type driftLog struct {
	log   *zap.Logger
	kinds map[datapath.DriftKind]*kindLog
}

type kindLog struct {
	since      time.Time
	logged     int
	suppressed int
}

func newDriftLog(log *zap.Logger) *driftLog {
	return &driftLog{log: log, kinds: make(map[datapath.DriftKind]*kindLog)}
}

func (l *driftLog) note(d datapath.Drift, repair bool, now time.Time) {
	k := l.kinds[d.Kind]
	if k == nil {
		k = &kindLog{since: now}
		l.kinds[d.Kind] = k
	}
	if k.logged >= driftLogBurst {
		k.suppressed++
		return
	}
	k.logged++
	fields := []zap.Field{zap.String("kind", string(d.Kind)), zap.String("object", d.Object), zap.String("detail", d.Detail)}
	switch {
	case d.Repaired:
		l.log.Error("datapath tampered with: repaired", fields...)
	case d.RepairError != "":
		l.log.Error("datapath tampered with and NOT repaired: this node may not enforce its rule set; the next check retries",
			append(fields, zap.String("repair-error", d.RepairError))...)
	case !repair:
		l.log.Error("datapath tampered with: not repaired (--repair=false)", fields...)
	}
}

// flush ends the periods that are over, saying how many lines each
// suppressed.
func (l *driftLog) flush(now time.Time) {
	for kind, k := range l.kinds {
		if now.Sub(k.since) < driftLogPeriod {
			continue
		}
		if k.suppressed > 0 {
			l.log.Error("datapath tampered with, more findings not logged one by one",
				zap.String("kind", string(kind)), zap.Int("findings", k.suppressed), zap.Duration("period", now.Sub(k.since).Round(time.Second)))
		}
		delete(l.kinds, kind)
	}
}
