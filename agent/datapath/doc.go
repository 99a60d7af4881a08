// Package datapath owns the agent's kernel objects: it loads the eBPF
// programs, attaches them with tcx, pins everything under a bpffs directory,
// applies rule sets atomically, reads flow events and counters, and detaches.
// It is the only package of Eastguard that touches the kernel; nothing else
// holds an *ebpf.Map or *ebpf.Program.
//
// Fail-static: closing the package's handles never removes enforcement.
// Programs stay attached through pinned tcx links, maps stay pinned, and a
// later Open adopts them without a gap. Only Uninstall removes them.
//
// It is the only package that holds eBPF objects or touches the kernel's
// networking; it must not import anything under controller/ nor decide
// policy (it enforces the rule sets it is given).
package datapath
