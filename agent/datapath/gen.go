package datapath

// The eBPF object is compiled from bpf/ by bpf2go; its outputs
// (eastguard_bpfel.go, eastguard_bpfel.o) are committed so that building the
// agent needs no clang. The compiler, strip tool and C flags come from the
// Makefile (BPF2GO_CC, BPF2GO_STRIP, BPF2GO_CFLAGS): run `make generate`.

//go:generate go tool bpf2go -target bpfel -output-stem eastguard -type eg_endpoint -type eg_ipcache_key -type eg_ipcache_value -type eg_policy_key -type eg_policy_value -type eg_range_key -type eg_range_value -type eg_port_interval -type eg_flow_event -type eg_flow_event4 -type eg_ct_tail -type eg_host_key -type eg_nd_key -type eg_nd_entry -type eg_ct_count -type eg_ct_adjust_req -type eg_ev_ring bpf ../../bpf/eastguard.c
