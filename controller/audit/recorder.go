package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/store"
)

// Defaults and bounds of the Recorder's work.
const (
	// DefaultRetention is how long records are kept by default: a year
	// and a month, so that a yearly review finds the whole year.
	DefaultRetention = 400 * 24 * time.Hour
	// pruneInterval is how often records past retention are deleted.
	pruneInterval = time.Hour
	// logPoll is how often the log file catches up without being woken:
	// records another controller process sharing the store appended.
	logPoll = 5 * time.Second
	// page bounds the records read at once (log file, chain check).
	page = 1000
)

// Config configures a Recorder.
type Config struct {
	Store store.Store
	Log   *zap.Logger
	Now   func() time.Time
	// Registry receives the metrics; nil means none.
	Registry prometheus.Registerer
	// LogFile, if set, receives every record as one JSON line
	// (apiclient.AuditRecord), appended after the store's commit.
	LogFile string
	// Retention is how long records are kept; 0 keeps them forever.
	Retention time.Duration
}

// Recorder counts the records written, copies them to the log file,
// prunes them after the retention and checks their chain. A nil
// *Recorder counts nothing (tests of one package).
type Recorder struct {
	cfg  Config
	m    *metrics
	wake chan struct{}

	// logMu guards the log file and how far it is written: the Run
	// loop and Flush write it.
	logMu      sync.Mutex
	file       *os.File
	lastLogged uint64
	failing    bool // the last write failed (logged once per streak)
}

type metrics struct {
	records       *prometheus.CounterVec
	logFailures   prometheus.Counter
	chainBroken   prometheus.Gauge
	pruned        prometheus.Counter
	logLastRecord prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eastguard_controller_audit_records_total",
			Help: "Audit records written to the store by this controller, by action.",
		}, []string{"action"}),
		logFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eastguard_controller_audit_log_write_failures_total",
			Help: "Failed writes of audit records to the --audit-log file (retried; the changes are never held back).",
		}),
		chainBroken: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eastguard_controller_audit_chain_broken",
			Help: "1 when the last check of the audit trail's hash chain found a break (a record changed, inserted or deleted), else 0.",
		}),
		pruned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "eastguard_controller_audit_records_pruned_total",
			Help: "Audit records deleted past --audit-retention.",
		}),
		logLastRecord: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "eastguard_controller_audit_log_last_record",
			Help: "ID of the last audit record written to the --audit-log file (0: none, or no file).",
		}),
	}
	for _, a := range []string{PolicyApply, PolicyDelete, TokenCreate, TokenDelete, AdminTokenCreate, AdminTokenRevoke,
		NodeJoin, NodeRenew, NodeRevoke, AlertAcknowledge, LoginSuccess, LoginFailure} {
		m.records.WithLabelValues(a)
	}
	if reg != nil {
		reg.MustRegister(m.records, m.logFailures, m.chainBroken, m.pruned, m.logLastRecord)
	}
	return m
}

// NewRecorder returns a Recorder; with a LogFile it opens it (mode 0600, append
// only, created if missing; a symbolic link is refused) and finds the
// last record it holds, so that a restart neither repeats nor skips one.
func NewRecorder(ctx context.Context, cfg Config) (*Recorder, error) {
	if cfg.Store == nil {
		return nil, errors.New("audit: a store is required")
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Retention < 0 {
		return nil, fmt.Errorf("audit retention %s: want a positive duration, or 0 to keep every record", cfg.Retention)
	}
	r := &Recorder{cfg: cfg, m: newMetrics(cfg.Registry), wake: make(chan struct{}, 1)}
	if cfg.LogFile == "" {
		return r, nil
	}
	f, err := os.OpenFile(cfg.LogFile, os.O_RDWR|os.O_APPEND|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("--audit-log: %w", err)
	}
	// A regular file only: a device or a FIFO named by mistake would
	// have its mode changed, or block the writer.
	if info, err := f.Stat(); err != nil || !info.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("--audit-log %s: want a regular file", cfg.LogFile)
	}
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return nil, fmt.Errorf("--audit-log %s: %w", cfg.LogFile, err)
	}
	last, err := lastLoggedID(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("--audit-log %s: %w", cfg.LogFile, err)
	}
	r.file, r.lastLogged = f, last
	newest, err := cfg.Store.LastAudit(ctx)
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		f.Close()
		return nil, err
	}
	if newest.ID < last {
		// The store is behind its own log: restored from an older backup,
		// or another store. Say so, and log what it appends from now on.
		cfg.Log.Warn("the audit log file holds records the store does not: the store was restored from an older backup, or is another store",
			zap.String("file", cfg.LogFile), zap.Uint64("file-last-record", last), zap.Uint64("store-last-record", newest.ID))
		r.lastLogged = newest.ID
	}
	r.m.logLastRecord.Set(float64(r.lastLogged))
	return r, nil
}

// lastLoggedID returns the ID of the last whole line of f (0 for an
// empty file). A last line cut short (a crash in the middle of a write)
// is ended with a newline, so that the next line starts whole.
func lastLoggedID(f *os.File) (uint64, error) {
	info, err := f.Stat()
	if err != nil {
		return 0, err
	}
	size := info.Size()
	if size == 0 {
		return 0, nil
	}
	const tail = 64 << 10
	off := max(size-tail, 0)
	buf := make([]byte, size-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return 0, err
	}
	if buf[len(buf)-1] != '\n' {
		if _, err := f.Write([]byte("\n")); err != nil {
			return 0, err
		}
		buf = buf[:bytes.LastIndexByte(buf, '\n')+1]
	}
	lines := bytes.Split(bytes.TrimRight(buf, "\n"), []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		var v struct {
			ID uint64 `json:"id"`
		}
		if json.Unmarshal(lines[i], &v) == nil && v.ID > 0 {
			return v.ID, nil
		}
	}
	return 0, nil
}

// Written counts records a committed change wrote and wakes the log
// file's writer. It never blocks.
func (r *Recorder) Written(recs ...store.AuditRecord) {
	if r == nil || len(recs) == 0 {
		return
	}
	for _, rec := range recs {
		r.m.records.WithLabelValues(rec.Action).Inc()
	}
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Append writes records that go with no other change (a login, an
// alert's acknowledgement) and counts them.
func (r *Recorder) Append(ctx context.Context, recs ...store.AuditRecord) error {
	if r == nil {
		return nil
	}
	if _, err := r.cfg.Store.AppendAudit(ctx, recs...); err != nil {
		return err
	}
	r.Written(recs...)
	return nil
}

// Run checks the chain once, then copies new records to the log file
// (woken by Written, and every few seconds for other processes'
// records) and prunes past the retention, until ctx ends.
func (r *Recorder) Run(ctx context.Context) {
	if err := r.Verify(ctx); err != nil && ctx.Err() == nil {
		r.cfg.Log.Error("audit trail: hash chain check failed", zap.Error(err))
	}
	r.prune(ctx)
	poll := time.NewTicker(logPoll)
	defer poll.Stop()
	prune := time.NewTicker(pruneInterval)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			r.Flush(context.Background())
			return
		case <-r.wake:
		case <-poll.C:
		case <-prune.C:
			r.prune(ctx)
			continue
		}
		r.Flush(ctx)
	}
}

// Verify checks the hash chain of every record kept and sets the
// chain-broken gauge. A break is an *store.AuditChainError.
func (r *Recorder) Verify(ctx context.Context) error {
	var prev *store.AuditRecord
	var after uint64
	for {
		recs, err := r.cfg.Store.AuditRecords(ctx, store.AuditQuery{AfterID: after, OldestFirst: true, Limit: page})
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			r.m.chainBroken.Set(0)
			return nil
		}
		if err := store.VerifyAuditChain(prev, recs); err != nil {
			r.m.chainBroken.Set(1)
			return err
		}
		prev = &recs[len(recs)-1]
		after = prev.ID
	}
}

func (r *Recorder) prune(ctx context.Context) {
	if r.cfg.Retention <= 0 {
		return
	}
	n, err := r.cfg.Store.PruneAudit(ctx, r.cfg.Now().Add(-r.cfg.Retention))
	if err != nil {
		if ctx.Err() == nil {
			r.cfg.Log.Warn("audit trail: pruning past the retention failed; retried in an hour", zap.Error(err))
		}
		return
	}
	r.m.pruned.Add(float64(n))
	if n > 0 {
		r.cfg.Log.Info("audit trail: records past the retention deleted", zap.Int64("records", n), zap.Duration("retention", r.cfg.Retention))
	}
}

// Flush appends to the log file every record the store has beyond the
// last one written. A failure is logged (once until a write succeeds
// again) and counted, and retried at the next flush; it never holds back
// a change, which the store committed already.
func (r *Recorder) Flush(ctx context.Context) error {
	if r == nil {
		return nil
	}
	r.logMu.Lock()
	defer r.logMu.Unlock()
	if r.file == nil {
		return nil
	}
	for {
		recs, err := r.cfg.Store.AuditRecords(ctx, store.AuditQuery{AfterID: r.lastLogged, OldestFirst: true, Limit: page})
		if err != nil {
			if ctx.Err() != nil {
				return err // stopping: Close writes the rest
			}
			return r.logFailed(fmt.Errorf("read the records to log: %w", err))
		}
		if len(recs) == 0 {
			if r.failing {
				r.failing = false
				r.cfg.Log.Info("audit log file writable again", zap.String("file", r.cfg.LogFile))
			}
			return nil
		}
		var b bytes.Buffer
		for _, rec := range recs {
			line, err := json.Marshal(View(rec))
			if err != nil {
				return r.logFailed(err)
			}
			b.Write(line)
			b.WriteByte('\n')
		}
		// One write per page: with O_APPEND the lines land whole and in
		// order. A short write leaves a cut line that the next start
		// ends (lastLoggedID); the records are written again after it.
		if _, err := r.file.Write(b.Bytes()); err != nil {
			return r.logFailed(err)
		}
		r.lastLogged = recs[len(recs)-1].ID
		r.m.logLastRecord.Set(float64(r.lastLogged))
	}
}

func (r *Recorder) logFailed(err error) error {
	r.m.logFailures.Inc()
	if !r.failing {
		r.failing = true
		r.cfg.Log.Error("audit log file: write failed; the records stay in the store and are written again at the next attempt",
			zap.String("file", r.cfg.LogFile), zap.Error(err))
	}
	return err
}

// Close writes what the log file lacks and closes it.
func (r *Recorder) Close() error {
	if r == nil {
		return nil
	}
	ferr := r.Flush(context.Background())
	r.logMu.Lock()
	defer r.logMu.Unlock()
	if r.file == nil {
		return ferr
	}
	err := r.file.Close()
	r.file = nil
	return errors.Join(ferr, err)
}
