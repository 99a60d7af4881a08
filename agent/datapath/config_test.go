package datapath

import (
	"strings"
	"testing"

	"github.com/cilium/ebpf/asm"
)

// configValues is a value for every configuration constant the object
// reads, each distinct, so a value written to the wrong constant shows.
func configValues(t *testing.T) map[string]uint64 {
	t.Helper()
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]uint64{}
	for _, ps := range spec.Programs {
		for _, ins := range ps.Instructions {
			if ref := ins.Reference(); strings.HasPrefix(ref, configPrefix) {
				if _, ok := values[ref]; !ok {
					values[ref] = uint64(1000 + len(values))
				}
			}
		}
	}
	// The loader sets every one of them (loadSpec would fail otherwise);
	// this list is what the C side declares with EG_CONFIG.
	if len(values) != 16 {
		t.Fatalf("the object reads %d configuration constants, want the 16 of bpf/eastguard.c: %v", len(values), values)
	}
	return values
}

// TestSetConstants: every read of a configuration constant becomes an
// immediate load of its value, with no reference left for the kernel to
// see as 0; an object reading a constant the loader does not set, or a
// loader setting one the object does not read, is refused.
func TestSetConstants(t *testing.T) {
	values := configValues(t)
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	if err := setConstants(spec, values); err != nil {
		t.Fatal(err)
	}
	written := 0
	for name, ps := range spec.Programs {
		for i, ins := range ps.Instructions {
			if ref := ins.Reference(); strings.HasPrefix(ref, configPrefix) {
				t.Errorf("%s: instruction %d still refers to %s", name, i, ref)
			}
			if ins.OpCode.IsDWordLoad() && ins.Src == asm.R0 && ins.Constant >= 1000 && ins.Constant < 1000+int64(len(values)) {
				written++
			}
		}
	}
	if written == 0 {
		t.Fatal("no instruction carries a configuration value")
	}

	missing := configValues(t)
	delete(missing, "eg_cfg_hz")
	spec, _ = loadBpf()
	if err := setConstants(spec, missing); err == nil || !strings.Contains(err.Error(), "eg_cfg_hz") {
		t.Errorf("an object reading eg_cfg_hz loaded without its value: %v", err)
	}
	extra := configValues(t)
	extra["eg_cfg_renamed"] = 1
	spec, _ = loadBpf()
	if err := setConstants(spec, extra); err == nil || !strings.Contains(err.Error(), "eg_cfg_renamed") {
		t.Errorf("a value no program reads was accepted: %v", err)
	}
}
