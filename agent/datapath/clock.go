package datapath

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The datapath keeps time in jiffies (see bpf/eastguard.c). User space
// needs the kernel's HZ to scale timeouts, and a way to read jiffies to
// turn event times into wall-clock times.

// jiffyProbe is a program that returns bpf_jiffies64() (its low 32 bits,
// as BPF_PROG_TEST_RUN returns 32 bits).
func newJiffyProbe() (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "eg_jiffies",
		Type:    ebpf.SchedCLS,
		License: "Dual BSD/GPL",
		Instructions: asm.Instructions{
			asm.FnJiffies64.Call(),
			asm.Return(),
		},
	})
	if err != nil {
		return nil, fmt.Errorf("load jiffies probe: %w", err)
	}
	return p, nil
}

func readJiffies(probe *ebpf.Program) (uint32, error) {
	ret, _, err := probe.Test(make([]byte, 14))
	if err != nil {
		return 0, fmt.Errorf("read jiffies: %w", err)
	}
	return ret, nil
}

// kernelHZ returns CONFIG_HZ from the kernel's config if it is readable,
// else measures it with the probe against CLOCK_MONOTONIC.
func kernelHZ(probe *ebpf.Program) (uint32, error) {
	if hz, ok := configHZ(); ok {
		return hz, nil
	}
	j0, err := readJiffies(probe)
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	time.Sleep(200 * time.Millisecond)
	j1, err := readJiffies(probe)
	if err != nil {
		return 0, err
	}
	measured := float64(j1-j0) / time.Since(t0).Seconds()
	best := uint32(0)
	for _, hz := range []uint32{100, 250, 300, 1000} {
		if best == 0 || abs(measured-float64(hz)) < abs(measured-float64(best)) {
			best = hz
		}
	}
	return best, nil
}

func abs(f float64) float64 {
	if f < 0 {
		return -f
	}
	return f
}

func configHZ() (uint32, bool) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + release} {
		f, err := os.Open(path)
		if err != nil {
			continue
		}
		var r io.Reader = f
		if strings.HasSuffix(path, ".gz") {
			gz, err := gzip.NewReader(f)
			if err != nil {
				f.Close()
				continue
			}
			r = gz
		}
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "CONFIG_HZ="); ok {
				if hz, err := strconv.ParseUint(v, 10, 32); err == nil && hz > 0 {
					f.Close()
					return uint32(hz), true
				}
			}
		}
		f.Close()
	}
	return 0, false
}

// Clock converts event times (jiffies) to wall-clock times. It samples
// (jiffies, wall time) pairs through the probe and re-samples every few
// seconds, so NTP adjustments are followed; resolution is one jiffy.
type Clock struct {
	probe *ebpf.Program
	tick  time.Duration

	mu     sync.Mutex
	j0     uint32 // low 32 bits of jiffies at wall0
	wall0  time.Time
	sample time.Time
}

// NewStaticClock converts with a fixed reference instead of sampling the
// kernel: for decoding recorded events, tests and benchmarks.
func NewStaticClock(hz uint32, jiffies uint32, at time.Time) *Clock {
	return &Clock{tick: time.Second / time.Duration(hz), j0: jiffies, wall0: at, sample: at}
}

func newClock(probe *ebpf.Program, hz uint32) *Clock {
	c := &Clock{probe: probe, tick: time.Second / time.Duration(hz)}
	c.resample()
	return c
}

func (c *Clock) resample() {
	before := time.Now()
	j, err := readJiffies(c.probe)
	if err != nil {
		return // keep the previous sample
	}
	after := time.Now()
	c.j0 = j
	c.wall0 = before.Add(after.Sub(before) / 2)
	c.sample = after
}

// Wall converts a jiffies value from an event. Deltas are taken on the low
// 32 bits, valid for about 99 days at HZ=250 either side of the last
// sample, which is never more than seconds old.
func (c *Clock) Wall(jiffies uint64) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.probe != nil && time.Since(c.sample) > 5*time.Second {
		c.resample()
	}
	delta := int32(uint32(jiffies) - c.j0)
	return c.wall0.Add(time.Duration(delta) * c.tick)
}
