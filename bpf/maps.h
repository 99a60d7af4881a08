// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright The Eastguard Authors */

/*
 * Every map, key, value and shared constant of the Eastguard datapath.
 *
 * The Go side (agent/datapath) gets its types from here through
 * `bpf2go -type`, and a layout test checks the sizes and offsets it relies
 * on; internal/ruleset mirrors the policy lookup in Go. Keep all three in
 * step.
 *
 * Rule-set generations. A rule set is five maps: endpoints, ipcache (host
 * entries and prefixes), exact policy and range policy. Each lives in an ARRAY_OF_MAPS with two slots.
 * The agent fills fresh inner maps for the inactive slot, then flips
 * eg_state (one aligned 32-bit store), so a packet sees either the whole old
 * rule set or the whole new one, never a mix. Incremental updates (an
 * interface appears, a pod address changes) write the active slot's maps in
 * place, entry by entry, and bump the generation too.
 *
 * Conntrack entries remember the generation their verdict was computed in;
 * after any change the first packet of every established flow is checked
 * against the new rule set once, so revoking access also cuts existing
 * connections.
 */
#ifndef EG_MAPS_H
#define EG_MAPS_H

#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* Must equal ruleset.MaxIntervals. */
#define EG_MAX_RANGES 32
#define EG_GEN_SLOTS  2

/* Reserved identities (internal/ruleset). */
#define EG_IDENTITY_ANY   0
#define EG_IDENTITY_WORLD 1
#define EG_IDENTITY_HOST  2

enum eg_direction {
	EG_DIR_INGRESS = 0, /* to the workload */
	EG_DIR_EGRESS  = 1, /* from the workload */
};

enum eg_verdict {
	EG_VERDICT_NONE       = 0,
	EG_VERDICT_ALLOWED    = 1,
	EG_VERDICT_DENIED     = 2,
	EG_VERDICT_WOULD_DENY = 3, /* monitor mode: reported, passes */
};

enum eg_mode {
	EG_MODE_ENFORCE = 0,
	EG_MODE_MONITOR = 1,
};

/* Why a packet got a non-policy verdict, or which path decided it. */
enum eg_reason {
	EG_REASON_POLICY      = 0, /* the policy lookup (rule_id 0 = default deny) */
	EG_REASON_NO_ENDPOINT = 1, /* programs on an interface without an endpoint */
	EG_REASON_SPOOFED     = 2, /* egress with a source address that is not the workload's */
	EG_REASON_FRAGMENT    = 3, /* non-first fragment whose first fragment was not allowed */
	EG_REASON_REVALIDATED = 4, /* established flow re-checked after a rule-set change */
	EG_REASON_MALFORMED   = 5, /* truncated or inconsistent headers */
	EG_REASON_CT_FULL     = 6, /* admitted, but conntrack (or the endpoint's quota) is full */
};

enum eg_endpoint_flags {
	EG_EP_F_HOST = 1 << 0, /* host mode: hooks are the node's, no direction flip */
	EG_EP_F_L3   = 1 << 1, /* the device has no Ethernet header (tun, wireguard) */
};

/* Probe shapes (ruleset.Shape): which policy probes can hit. */
enum eg_shape {
	EG_SHAPE_EXACT_PEER     = 1 << 0,
	EG_SHAPE_RANGE_PEER     = 1 << 1,
	EG_SHAPE_EXACT_ANY      = 1 << 2,
	EG_SHAPE_RANGE_ANY      = 1 << 3,
	EG_SHAPE_ANYPROTO_PEER  = 1 << 4,
	EG_SHAPE_ANYPROTO_ANY   = 1 << 5,
};

/*
 * Per-CPU counters. Verdict counters come in (verdict, direction) pairs in
 * the order of enum eg_verdict so the index is computed:
 * EG_CNT_ALLOWED_INGRESS + (verdict - 1) * 2 + direction.
 * "allowed" counts new flows admitted; "denied" counts packets dropped;
 * "would-deny" counts packets monitor mode let through that enforce mode
 * would have dropped.
 */
enum eg_counter {
	EG_CNT_ALLOWED_INGRESS = 0,
	EG_CNT_ALLOWED_EGRESS,
	EG_CNT_DENIED_INGRESS,
	EG_CNT_DENIED_EGRESS,
	EG_CNT_WOULD_DENY_INGRESS,
	EG_CNT_WOULD_DENY_EGRESS,
	EG_CNT_ESTABLISHED,        /* packets passed by conntrack */
	EG_CNT_RELATED,            /* ICMP errors for a tracked flow */
	EG_CNT_REVALIDATED,        /* established flows re-checked after a change */
	EG_CNT_FORWARDED,          /* host mode: packets not to or from the node itself */
	EG_CNT_NEIGHBOR,           /* ARP, and IPv6 ND and MLD that cannot leave the link: pass */
	EG_CNT_NON_IP,             /* other ethertypes: pass */
	EG_CNT_FRAGMENTS,          /* IP fragments seen */
	EG_CNT_MALFORMED,
	EG_CNT_SPOOFED,
	EG_CNT_NO_ENDPOINT,
	EG_CNT_EVENTS_LOST,        /* ring buffer full: event not written */
	EG_CNT_EVENTS_SUPPRESSED,  /* deny events over the rate limit */
	EG_CNT_CT_FULL,            /* conntrack table full: new flow refused */
	EG_CNT_CT_ENDPOINT_FULL,   /* the endpoint's conntrack quota used up: new flow refused */
	EG_CNT_MAX,
};

/* eg_state (value struct eg_generation): the active generation. */
struct eg_generation {
	/* bit 0: active slot; bits 1..31: generation, 0 = no rule set yet.
	 * User space rewrites the value with a map update (a memcpy). The
	 * slot is in the lowest byte, and a byte cannot tear, so every packet
	 * sees exactly the old or the new rule set. A torn generation number
	 * only makes conntrack re-check a flow once more, which is harmless. */
	__u32 word;
	__u32 pad;
};

/*
 * eg_endpoints inner map: ifindex -> endpoint, as a direct-mapped array
 * (an inlined array lookup costs a few ns, a hash lookup tens): the entry
 * for ifindex i is in the first slot of i, i+1, ... i+EG_EP_PROBES-1
 * (mod EG_EP_SLOTS) whose ifindex is i; a slot with ifindex 0 ends the
 * search. User space places entries and refuses a rule set whose
 * interfaces cannot all be placed. A removed entry keeps its slot with
 * ifindex EG_EP_TOMBSTONE, so later entries stay reachable.
 */
enum eg_endpoint_table {
	EG_EP_SLOTS  = 16384,
	EG_EP_PROBES = 4,
};
#define EG_EP_TOMBSTONE 0xffffffff /* datapath.epTombstone */

struct eg_endpoint {
	__u32 ifindex;      /* 0: empty slot */
	__u32 id;           /* ruleset.EndpointID, never 0 */
	__u32 identity;     /* the workload's own identity */
	__u8  mode;         /* enum eg_mode */
	__u8  flags;        /* enum eg_endpoint_flags */
	__u8  shapes[2];    /* enum eg_shape bits, indexed by enum eg_direction */
	__u16 ct_slot;      /* the endpoint's conntrack quota in eg_ct_ep (datapath.ctSlots) */
	__u16 pad;
};

/*
 * eg_ipcache inner map (LPM trie): address -> identity. IPv4 and IPv6 share
 * one trie; the family byte keeps ::/0 from matching IPv4 addresses.
 * prefixlen counts the 32 bits of family+pad plus the address prefix.
 */
struct eg_ipcache_key {
	__u32 prefixlen;
	__u8  family;       /* 4 or 6 */
	__u8  pad[3];
	__u8  addr[16];     /* IPv4 in addr[0..3], the rest zero */
};

struct eg_ipcache_value {
	__u32 identity;
	__u32 pad;
};

/*
 * eg_ipcache_hosts inner map (hash): the full-length entries of the
 * ipcache (IPv4 /32, IPv6 /128), i.e. the workloads' own addresses. A hash
 * hit costs about half an LPM lookup in a trie of thousands of host
 * routes, and a full-length prefix is always the longest match, so the
 * lookup tries here first and the trie (eg_ipcache) holds only shorter
 * prefixes (CIDR peers).
 */
struct eg_host_key {
	__u32 family;       /* 4 or 6 */
	__u8  addr[16];     /* IPv4 in addr[0..3], the rest zero */
};

/*
 * eg_policy inner map: exact probes. Wildcards: peer_identity 0 = any peer;
 * protocol 0 (with port 0) = any protocol and port. port is the TCP/UDP
 * destination port of the flow's first packet, or type<<8|code for ICMP, in
 * host byte order. See internal/ruleset/encode.go for the probe order.
 */
struct eg_policy_key {
	__u32 endpoint_id;
	__u32 peer_identity;
	__u8  direction;
	__u8  protocol;
	__u16 port;
};

struct eg_policy_value {
	__u32 rule_id;      /* 0 = default deny */
	__u8  verdict;      /* enum eg_verdict */
	__u8  pad[3];
};

/* eg_policy_ranges inner map: per (endpoint, peer, dir, proto) sorted
 * disjoint port intervals, binary-searched. peer_identity 0 = any peer. */
struct eg_range_key {
	__u32 endpoint_id;
	__u32 peer_identity;
	__u8  direction;
	__u8  protocol;
	__u16 pad;
};

struct eg_port_interval {
	__u16 lo;
	__u16 hi;           /* inclusive */
	__u32 rule_id;
	__u8  verdict;
	__u8  pad[3];
};

struct eg_range_value {
	__u32 count;        /* intervals used, <= EG_MAX_RANGES */
	__u32 pad;
	struct eg_port_interval iv[EG_MAX_RANGES];
};

/* How the ports of a conntrack key are to be read (ICMP has no ports). */
enum eg_ct_kind {
	EG_CT_KIND_PORTS     = 0, /* TCP, UDP, other: local/remote ports (0 without ports) */
	EG_CT_KIND_ECHO      = 1, /* ICMP(v6) echo: local_port = identifier, remote_port = 0 */
	EG_CT_KIND_ICMP      = 2, /* other ICMP: local_port = direction, remote_port = type<<8|code */
};

/*
 * eg_ct4, eg_ct6: conntrack, keyed from the endpoint's point of view so
 * that both directions of a flow find the same entry with one lookup:
 * "local" is the workload's side, "remote" the peer's. endpoint_id keeps
 * two workloads on one node from sharing state: each end decides on its
 * own. IPv4 has its own map because a 20-byte key hashes and compares in
 * about two thirds of the time of the 44-byte IPv6 one, on every packet.
 *
 * Preallocated plain hashes, not LRU: an LRU insert costs an element
 * allocation and a free on shared lists (71 ns over an empty program,
 * BenchmarkPrimitives), a preallocated insert takes an element from a
 * per-CPU free list. Nothing is evicted: the agent deletes expired entries
 * (datapath.GC), and a full table refuses new flows (EG_REASON_CT_FULL,
 * counted) while established ones go on. Each endpoint may hold at most
 * cfg_ct_ep_max of each map (eg_ct_ep), so that one workload cannot fill
 * the table and have the others' new flows refused.
 */
struct eg_ct_tail {
	__u32 endpoint_id;
	__u16 local_port;
	__u16 remote_port;
	__u8  protocol;
	__u8  kind;         /* enum eg_ct_kind */
	__u16 pad;
};

struct eg_ct4_key {
	__be32 local;
	__be32 remote;
	struct eg_ct_tail t;
};

struct eg_ct6_key {
	__u8  local[16];
	__u8  remote[16];
	struct eg_ct_tail t;
};

enum eg_ct_state {
	EG_CT_SEEN_REPLY = 1 << 0,
	EG_CT_FIN_ORIG   = 1 << 1,
	EG_CT_FIN_REPLY  = 1 << 2,
	EG_CT_CLOSING    = 1 << 3, /* RST seen */
};

struct eg_ct_entry {
	__u64 expires;      /* bpf_jiffies64() after which the entry is dead */
	__u64 created;      /* bpf_jiffies64() of the flow's first packet */
	/* Counters per direction relative to the origin: [0] origin -> reply
	 * (what the side that opened the flow sent), [1] reply -> origin.
	 * Atomic adds: a flow's two directions are often processed on two
	 * CPUs at once (a reply's softirq while the sender transmits), and
	 * volume records must not lose counts (docs/ARCHITECTURE.md,
	 * "Conntrack"). 64 bits: no wrap the agent has to guess about. */
	__u64 packets[2];
	__u64 bytes[2];
	__u32 generation;   /* rule-set generation the verdict was checked in */
	__u32 rule_id;
	__u32 peer_identity;
	__u8  verdict;      /* EG_VERDICT_ALLOWED or EG_VERDICT_WOULD_DENY */
	__u8  origin;       /* enum eg_direction of the first packet */
	__u8  state;        /* enum eg_ct_state bits */
	__u8  pad;
};

/*
 * eg_ct_ep: per-endpoint conntrack quota, indexed by eg_endpoint.ct_slot
 * (slot 0: endpoints the agent could not give a slot of their own share
 * it). count[0] is the endpoint's entries in eg_ct4, count[1] in eg_ct6:
 * the datapath adds one per insert and takes one per delete of its own,
 * the agent's GC subtracts what it deleted (eg_ct_adjust), all with
 * atomic adds. Signed: a GC delete may be counted before the insert's add
 * lands.
 */
enum eg_ct_limits {
	EG_CT_EP_SLOTS = 16384,
};

struct eg_ct_count {
	__s64 count[2];
};

/* eg_ct_adjust's request (BPF_PROG_TEST_RUN data): add delta to
 * eg_ct_ep[slot].count[family]. */
struct eg_ct_adjust_req {
	__u32 slot;
	__u32 family;       /* 0 IPv4, 1 IPv6 */
	__s64 delta;
};

/* eg_frags: verdicts of first fragments, so later fragments (no L4 header)
 * follow them. Keyed by the packet's own addresses. */
struct eg_frag_key {
	__u8  src[16];
	__u8  dst[16];
	__u32 id;           /* IPv4 identification or IPv6 fragment id */
	__u32 endpoint_id;
	__u8  protocol;
	__u8  family;
	__u16 pad;
};

struct eg_frag_entry {
	__u64 expires;      /* jiffies */
	__u8  verdict;
	__u8  pad[7];
};

/* eg_ratelimit: per-CPU token bucket for deny and would-deny events. */
struct eg_ratelimit {
	__u64 last;         /* jiffies */
	__u64 tokens;       /* in event-jiffies: one event costs HZ */
	__u32 suppressed;   /* events dropped since the last one written */
	__u32 pad;
};

/*
 * eg_events: one record per new flow and per denied/would-deny packet.
 * IPv6 events are struct eg_flow_event (80 bytes); IPv4 events are struct
 * eg_flow_event4 (56 bytes), the same fields with 4-byte addresses, so that
 * with its record's 8-byte header word an event is one slot, one cache
 * line, instead of two: writing events is most of a new flow's cost after
 * the conntrack insert.
 * The reader tells them apart by size; every field after dst is 24 bytes
 * earlier in eg_flow_event4.
 */
struct eg_flow_event {
	__u64 jiffies;      /* bpf_jiffies64(): user space converts to wall time */
	__u8  src[16];      /* the packet's addresses, IPv4 in [0..3] */
	__u8  dst[16];
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 suppressed;   /* deny events suppressed on this CPU before this one */
	__u32 length;       /* packet length */
	__u16 src_port;     /* host order; ICMP: 0 */
	__u16 dst_port;     /* host order; ICMP: type<<8|code */
	__u8  family;
	__u8  protocol;
	__u8  direction;    /* enum eg_direction */
	__u8  verdict;      /* enum eg_verdict */
	__u8  reason;       /* enum eg_reason */
	__u8  tcp_flags;
	__u8  pad[2];
};

struct eg_flow_event4 {
	__u64 jiffies;
	__u8  src[4];
	__u8  dst[4];
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 rule_id;
	__u32 suppressed;
	__u32 length;
	__u16 src_port;
	__u16 dst_port;
	__u8  family;       /* always 4 */
	__u8  protocol;
	__u8  direction;
	__u8  verdict;
	__u8  reason;
	__u8  tcp_flags;
	__u8  pad[2];
};

/* ---- maps ---- */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eg_generation);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EG_GEN_SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_ARRAY);
		__uint(max_entries, EG_EP_SLOTS);
		__type(key, __u32);
		__type(value, struct eg_endpoint);
	});
} eg_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EG_GEN_SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);
		__uint(max_entries, 131072);
		__uint(map_flags, BPF_F_NO_PREALLOC);
		__type(key, struct eg_ipcache_key);
		__type(value, struct eg_ipcache_value);
	});
} eg_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EG_GEN_SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, 131072);
		__type(key, struct eg_host_key);
		__type(value, struct eg_ipcache_value);
	});
} eg_ipcache_hosts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EG_GEN_SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, 262144);
		__type(key, struct eg_policy_key);
		__type(value, struct eg_policy_value);
	});
} eg_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, EG_GEN_SLOTS);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct {
		__uint(type, BPF_MAP_TYPE_HASH);
		__uint(max_entries, 16384);
		__type(key, struct eg_range_key);
		__type(value, struct eg_range_value);
	});
} eg_policy_ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct eg_ct4_key);
	__type(value, struct eg_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_ct4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, struct eg_ct6_key);
	__type(value, struct eg_ct_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_ct6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EG_CT_EP_SLOTS);
	__type(key, __u32);
	__type(value, struct eg_ct_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_ct_ep SEC(".maps");

/* eg_ct_slots: endpoint id -> its slot in eg_ct_ep. The agent's own
 * record (no program reads it), pinned so that a restarted agent knows
 * which quota an endpoint's remaining entries count against. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EG_CT_EP_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_ct_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct eg_frag_key);
	__type(value, struct eg_frag_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_frags SEC(".maps");

/*
 * Neighbours heard on an interface: a global address that sent the
 * endpoint there a neighbour discovery message with hop limit 255, which
 * no router forwards, so it is on the endpoint's link. The endpoint may
 * send neighbour discovery to that address (unreachability probes,
 * advertisements answering its solicitations); to any other global
 * address such a message is a packet like any other (policy). Entries
 * expire EG_ND_NEIGH_SECS after the last message to or from them.
 */
#define EG_ND_NEIGH_SECS 3600

struct eg_nd_key {
	__u32 ifindex;
	__u8  addr[16];
};

struct eg_nd_entry {
	__u64 expires; /* jiffies */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct eg_nd_key);
	__type(value, struct eg_nd_entry);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_nd_neigh SEC(".maps");

/*
 * eg_events: the flow events, one ring per CPU, element i of an mmapable
 * array being CPU i's ring, read by the agent through a shared mapping.
 * Not the kernel's BPF ring buffer: its reserve and commit take a lock
 * (irqs off) and two atomic operations on shared lines, 42-56 ns of a new
 * flow's ~120 ns (BenchmarkEventRing). Here a CPU's programs are the only
 * writers of its ring (tc programs do not nest on a CPU: egress runs with
 * bottom halves off, ingress in softirq), so a record costs its stores
 * into a line of the CPU's own ring and one atomic add that publishes it.
 *
 * Layout of an element (struct eg_ev_ring, then cfg_ev_slots slots of
 * EG_EV_SLOT bytes): the producer's line (head, the cached tail) and the
 * agent's line (tail, kicked) are apart, so neither side's writes evict
 * the other's hot line. A record is one slot (IPv4) or two (IPv6), its
 * first word {kind, length}, then the event; a two-slot record never
 * wraps: the ring's last slot is then a pad record.
 *
 * Invariants: tail <= head <= tail + cfg_ev_slots; only the CPU's programs
 * write head and the slots, only the agent writes tail; slots in
 * [tail, head) are complete records (head is published after their
 * stores, by an atomic add: fully ordered on every architecture).
 *
 * Wake-ups go through eg_wake, a small kernel ring buffer: a CPU whose
 * ring holds cfg_events_wakeup_bytes or more writes its number there once
 * (kicked), which the agent clears before it drains that ring. Below that
 * the agent polls (every 100 ms).
 *
 * The loader sets the element count (possible CPUs) and the value size.
 */
enum eg_ev_ring_geometry {
	EG_EV_SLOT = 64,  /* bytes of a slot */
	EG_EV_HDR  = 128, /* bytes of struct eg_ev_ring, before the slots */
	/* Record kinds, the low half of a record's first word; the high
	 * half is the event's length. */
	EG_EV_PAD  = 1,
	EG_EV_IPV4 = 4,
	EG_EV_IPV6 = 6,
};

struct eg_ev_ring {
	__u64 head;        /* next record's slot number; this CPU's programs only */
	__u64 cached_tail; /* their last read of tail */
	__u64 pad0[6];
	__u64 tail;        /* first unread slot number; the agent only */
	__u32 kicked;      /* set with a wake-up, cleared by the agent before it reads */
	__u32 pad1;
	__u64 pad2[6];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, 1);
	__uint(key_size, 4);
	__uint(value_size, EG_EV_HDR + 1024 * EG_EV_SLOT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_wake SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EG_CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct eg_ratelimit);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} eg_ratelimit SEC(".maps");

/*
 * BTF anchors. clang emits full BTF for the key and value types of a map
 * definition, but not for those of the inner-map template inside
 * __array(values, ...): they come out as forward declarations, which no
 * loader can size. Referencing each type from a global forces the full
 * definition. The pointers live in .rodata and are never read.
 */
#define EG_BTF_ANCHOR(type) const struct type *const eg_btf_##type = 0
EG_BTF_ANCHOR(eg_endpoint);
EG_BTF_ANCHOR(eg_ipcache_key);
EG_BTF_ANCHOR(eg_ipcache_value);
EG_BTF_ANCHOR(eg_host_key);
EG_BTF_ANCHOR(eg_policy_key);
EG_BTF_ANCHOR(eg_policy_value);
EG_BTF_ANCHOR(eg_range_key);
EG_BTF_ANCHOR(eg_range_value);
EG_BTF_ANCHOR(eg_flow_event);
EG_BTF_ANCHOR(eg_flow_event4);
EG_BTF_ANCHOR(eg_ct_adjust_req);
EG_BTF_ANCHOR(eg_ct_count);
EG_BTF_ANCHOR(eg_ev_ring);
/* Enums are only in BTF when a typed object uses them. */
#define EG_BTF_ENUM(type) const enum type eg_btf_##type = 0
EG_BTF_ENUM(eg_counter);
EG_BTF_ENUM(eg_reason);
EG_BTF_ENUM(eg_ev_ring_geometry);
EG_BTF_ENUM(eg_verdict);
EG_BTF_ENUM(eg_shape);
EG_BTF_ENUM(eg_endpoint_flags);
EG_BTF_ENUM(eg_ct_state);
EG_BTF_ENUM(eg_ct_kind);
EG_BTF_ENUM(eg_mode);
EG_BTF_ENUM(eg_direction);
EG_BTF_ENUM(eg_endpoint_table);
EG_BTF_ENUM(eg_ct_limits);

#endif /* EG_MAPS_H */
