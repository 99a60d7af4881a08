package datapath

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
)

// TestMapCallsSpecialized loads the programs and checks, in the
// instructions the verifier produced, that no map operation goes through
// the generic helpers (bpf_map_lookup_elem, bpf_map_update_elem,
// bpf_map_delete_elem). The verifier replaces a call on a map it can name
// by the map's own operation (a hash lookup inlined, an update called
// directly); a call site shared by two maps (clang merges the two
// families' conntrack calls unless bpf/eastguard.c keeps them apart, see
// EG_CT_CALL) stays generic and reaches the map through an indirect
// call: 7-10 ns more for an established packet in BenchmarkVerdict, more
// with retpolines in the real path.
func TestMapCallsSpecialized(t *testing.T) {
	h := newHarness(t, Config{Logger: zap.NewNop()})
	generic := kernelCallOffsets(t, "bpf_map_lookup_elem", "bpf_map_update_elem", "bpf_map_delete_elem")
	for name, prog := range map[string]*ebpf.Program{"eg_tc_ingress": h.d.objs.EgTcIngress, "eg_tc_egress": h.d.objs.EgTcEgress} {
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		insns, err := info.Instructions()
		if err != nil {
			t.Fatalf("%s: the verifier's instructions: %v", name, err)
		}
		calls := 0
		for i, ins := range insns {
			if !ins.IsBuiltinCall() {
				continue
			}
			calls++
			if fn, ok := generic[int32(ins.Constant)]; ok {
				t.Errorf("%s: instruction %d calls the generic %s: its map is not known to the verifier at that call site", name, i, fn)
			}
		}
		if calls == 0 {
			t.Fatalf("%s: no helper call found in %d instructions: the check would see nothing", name, len(insns))
		}
	}
}

// kernelCallOffsets gives the call immediates the verifier writes for the
// named kernel functions (address - __bpf_call_base, from /proc/kallsyms).
func kernelCallOffsets(t *testing.T, names ...string) map[int32]string {
	t.Helper()
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]bool{"__bpf_call_base": true}
	for _, n := range names {
		want[n] = true
	}
	addr := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || !want[fields[2]] {
			continue
		}
		a, err := strconv.ParseUint(fields[0], 16, 64)
		if err != nil {
			t.Fatalf("/proc/kallsyms: %q: %v", sc.Text(), err)
		}
		addr[fields[2]] = a
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	base := addr["__bpf_call_base"]
	if base == 0 {
		t.Skip("skipped: /proc/kallsyms shows no addresses (kernel.kptr_restrict), so helper calls cannot be told apart")
	}
	out := map[int32]string{}
	for _, n := range names {
		a, ok := addr[n]
		if !ok {
			t.Fatalf("/proc/kallsyms has no %s", n)
		}
		out[int32(a-base)] = n
	}
	if len(out) != len(names) {
		t.Fatalf("kallsyms: two of %v at one address", names)
	}
	return out
}
