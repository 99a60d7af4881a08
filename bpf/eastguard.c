// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright The Eastguard Authors */
//go:build ignore

/*
 * Eastguard datapath: per-workload default-deny enforcement on tcx.
 *
 * Per packet:
 *   1. endpoint of the interface (eg_endpoints, active generation)
 *   2. parse; ARP, IPv6 ND/MLD that cannot leave the link, and non-IP
 *      pass; malformed drops (enforce)
 *   3. non-first fragments follow their first fragment (eg_frags)
 *   4. conntrack (eg_ct4, eg_ct6): an established flow checked in the current
 *      generation passes after one lookup; ICMP errors about a tracked flow
 *      pass as related
 *   5. new flow: identities from eg_ipcache, the local address checked
 *      (anti-spoofing in container mode, forwarded traffic in host mode),
 *      policy probes (see internal/ruleset/encode.go), monitor downgrade,
 *      conntrack entry for admitted flows, flow event.
 *
 * Return codes: TCX_NEXT lets the packet continue to any later tcx program
 * (we only ever take away), TCX_DROP drops it.
 */

#include "maps.h"
#include "packet.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* enum tcx_action_base of Linux 6.6's uapi; Debian's linux-libc-dev predates
 * it. agent/datapath's tests name the same values (retPass, retDrop). */
#define TCX_NEXT (-1)
#define TCX_DROP 2

/* One load the compiler may not merge, repeat or move: for lines another
 * CPU writes (the agent's side of an event ring). */
#define READ_ONCE(x) (*(volatile __typeof__(x) *)&(x))

/*
 * Runtime switches, set by the loader (agent/datapath.Config). Times are in
 * jiffies: bpf_jiffies64() costs a couple of ns where the kernel clocks
 * cost tens, and second resolution is all conntrack needs. The loader
 * knows the kernel's HZ and scales the timeouts.
 *
 * Each is a constant the loader writes into the instructions themselves:
 * EG_CONFIG emits a 64-bit immediate load with a relocation against an
 * undefined symbol (eg_cfg_...), and agent/datapath (setConstants, load.go) puts the
 * value in every such instruction before the programs are loaded,
 * refusing an object that names a symbol it does not know. A read then
 * costs no memory access; as globals in .rodata, each read was a load
 * from the map's lines, which are cold in the real path, where a packet
 * follows the scheduler and the stack rather than the last packet. The
 * verifier sees a known scalar either way, so it still prunes what a
 * switch turns off. Not volatile: the same value may be read once.
 */
#define EG_CONFIG(sym) ({ __u64 __v; asm("%0 = " #sym " ll" : "=r"(__v)); __v; })

#define cfg_default_mode         ((__u8)EG_CONFIG(eg_cfg_default_mode))          /* interfaces without an endpoint */
#define cfg_hz                   ((__u32)EG_CONFIG(eg_cfg_hz))
#define cfg_deny_events_per_sec  ((__u32)EG_CONFIG(eg_cfg_deny_events_per_sec))  /* per CPU; 0 = no limit */
#define cfg_deny_events_burst    ((__u32)EG_CONFIG(eg_cfg_deny_events_burst))
#define cfg_events_wakeup_bytes  ((__u32)EG_CONFIG(eg_cfg_events_wakeup_bytes))  /* 0 or 1: wake the reader on every event */
#define cfg_ev_slots             ((__u64)EG_CONFIG(eg_cfg_ev_slots))             /* slots of each CPU's event ring, a power of two */
#define cfg_ev_mask              ((__u64)EG_CONFIG(eg_cfg_ev_mask))              /* cfg_ev_slots - 1 */
#define cfg_ct_revalidate        ((__u8)EG_CONFIG(eg_cfg_ct_revalidate))         /* re-check established flows after a change */
#define cfg_ct_accounting        ((__u8)EG_CONFIG(eg_cfg_ct_accounting))         /* packet and byte counts per flow */
#define cfg_ct_tcp_syn_j         ((__u32)EG_CONFIG(eg_cfg_ct_tcp_syn_j))
#define cfg_ct_tcp_established_j ((__u32)EG_CONFIG(eg_cfg_ct_tcp_established_j))
#define cfg_ct_tcp_close_j       ((__u32)EG_CONFIG(eg_cfg_ct_tcp_close_j))
#define cfg_ct_other_j           ((__u32)EG_CONFIG(eg_cfg_ct_other_j))
#define cfg_frag_timeout_j       ((__u32)EG_CONFIG(eg_cfg_frag_timeout_j))
/* Per-endpoint conntrack quota: entries of eg_ct4 ([0]) and eg_ct6 ([1]). */
#define cfg_ct_ep_max4           ((__s64)EG_CONFIG(eg_cfg_ct_ep_max4))
#define cfg_ct_ep_max6           ((__s64)EG_CONFIG(eg_cfg_ct_ep_max6))

static __always_inline void eg_count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&eg_counters, &idx);

	if (c)
		*c += 1;
}

static __always_inline void eg_count_verdict(__u8 verdict, __u8 dir)
{
	if (verdict >= EG_VERDICT_ALLOWED && verdict <= EG_VERDICT_WOULD_DENY)
		eg_count(EG_CNT_ALLOWED_INGRESS + (verdict - 1) * 2 + (dir & 1));
}

/* ---- events ---- */

/* eg_ratelimit_take takes a token for a deny event. It returns 0 when the
 * event must be suppressed, else 1 and the number suppressed before it.
 * Tokens are event-jiffies: a jiffy adds the per-second rate, an event
 * costs HZ. */
static __always_inline int eg_ratelimit_take(__u64 now, __u32 *suppressed)
{
	__u32 zero = 0;
	struct eg_ratelimit *rl;
	__u64 cap, elapsed, cost = cfg_hz;

	*suppressed = 0;
	if (!cfg_deny_events_per_sec)
		return 1;
	rl = bpf_map_lookup_elem(&eg_ratelimit, &zero);
	if (!rl)
		return 1;
	cap = (__u64)cfg_deny_events_burst * cost;
	elapsed = now - rl->last;
	if (elapsed > 10 * cost)
		elapsed = 10 * cost;
	rl->tokens += elapsed * cfg_deny_events_per_sec;
	if (rl->tokens > cap)
		rl->tokens = cap;
	rl->last = now;
	if (rl->tokens < cost) {
		rl->suppressed++;
		return 0;
	}
	rl->tokens -= cost;
	*suppressed = rl->suppressed;
	rl->suppressed = 0;
	return 1;
}

struct eg_verdict_ctx {
	__u64 now;          /* bpf_jiffies64() of the packet, set before any event */
	__u32 ifindex;
	__u32 endpoint_id;
	__u32 local_identity;
	__u32 peer_identity;
	__u32 rule_id;
	__u8  dir;
	__u8  verdict;
	__u8  reason;
};

/*
 * The event's fields after the addresses, as six 64-bit words in the
 * order of struct eg_flow_event (and eg_flow_event4, 24 bytes earlier):
 * composed in registers and stored once each, straight into the ring's
 * reserved record. Writing field by field cost a store per byte field;
 * the record is written where the ring was last written a lap ago, so
 * fewer, wider stores into that cold line are what is cheap. Every byte
 * is written (pads as zero): nothing is zeroed first.
 */
static __always_inline void eg_event_tail(__u64 *w, __u64 now, const struct eg_pkt *p,
					  const struct eg_verdict_ctx *v, __u32 suppressed)
{
	__u32 src_id = v->dir == EG_DIR_INGRESS ? v->peer_identity : v->local_identity;
	__u32 dst_id = v->dir == EG_DIR_INGRESS ? v->local_identity : v->peer_identity;
	__u16 sport = (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) ? 0 : p->sport;

	w[0] = (__u64)v->endpoint_id << 32 | v->ifindex;
	w[1] = (__u64)dst_id << 32 | src_id;
	w[2] = (__u64)suppressed << 32 | v->rule_id;
	w[3] = (__u64)p->dport << 48 | (__u64)sport << 32 | p->len;
	w[4] = (__u64)p->tcp_flags << 40 | (__u64)v->reason << 32 | (__u64)v->verdict << 24 |
	       (__u64)v->dir << 16 | (__u64)p->proto << 8 | p->family;
}

/*
 * eg_ev_slot is slot idx of ring r. idx must be at most cfg_ev_mask: the
 * verifier checks the access against the value size the loader set.
 */
static __always_inline __u64 *eg_ev_slot(struct eg_ev_ring *r, __u64 idx)
{
	return (void *)r + EG_EV_HDR + idx * EG_EV_SLOT;
}

/* Global (verified once, on its own): see eg_parse. Writes one record into
 * this CPU's ring of eg_events (see maps.h for the protocol). */
__noinline int eg_emit(const struct eg_pkt *p, const struct eg_verdict_ctx *v)
{
	__u32 suppressed = 0, cpu, n, pad;
	__u64 now, start, head, idx, fill;
	struct eg_ev_ring *r;
	__u64 *w;

	if (!p || !v)
		return 0;
	now = v->now;
	if (v->verdict != EG_VERDICT_ALLOWED && !eg_ratelimit_take(now, &suppressed)) {
		eg_count(EG_CNT_EVENTS_SUPPRESSED);
		return 0;
	}
	cpu = bpf_get_smp_processor_id();
	r = bpf_map_lookup_elem(&eg_events, &cpu);
	if (!r)
		goto lost;
	n = p->family == 4 ? 1 : 2;
	start = head = r->head;
	idx = head & cfg_ev_mask;
	/* The last slot cannot start a two-slot record: it is padded then. */
	pad = n == 2 && idx == cfg_ev_mask;
	if (head + pad + n - r->cached_tail > cfg_ev_slots) {
		r->cached_tail = READ_ONCE(r->tail);
		if (head + pad + n - r->cached_tail > cfg_ev_slots)
			goto lost;
	}
	if (pad) {
		eg_ev_slot(r, idx)[0] = EG_EV_PAD | (__u64)EG_EV_SLOT << 32;
		head++;
		idx = 0;
	}
	if (n == 1) {
		w = eg_ev_slot(r, idx);
		w[0] = EG_EV_IPV4 | (__u64)sizeof(struct eg_flow_event4) << 32;
		w[1] = now;
		w[2] = (__u64)*(const __u32 *)p->dst << 32 | *(const __u32 *)p->src;
		eg_event_tail(&w[3], now, p, v, suppressed);
	} else {
		if (idx >= cfg_ev_mask) /* cannot be (padded above): for the verifier */
			goto lost;
		w = eg_ev_slot(r, idx);
		w[0] = EG_EV_IPV6 | (__u64)sizeof(struct eg_flow_event) << 32;
		w[1] = now;
		__builtin_memcpy(&w[2], p->src, 16);
		__builtin_memcpy(&w[4], p->dst, 16);
		eg_event_tail(&w[6], now, p, v, suppressed);
	}
	/* Publish: head moves past the record, after its stores (a fetching
	 * atomic add is fully ordered on every architecture; its result is
	 * used so that it is one). Another writer would be a broken
	 * invariant: counted as a loss, as its record or this one is. */
	head += n;
	if (__sync_fetch_and_add(&r->head, head - start) != start)
		eg_count(EG_CNT_EVENTS_LOST);
	fill = head - r->cached_tail;
	if (fill * EG_EV_SLOT >= cfg_events_wakeup_bytes) {
		/* Maybe enough to wake the agent for: look at what it has read. */
		r->cached_tail = READ_ONCE(r->tail);
		fill = head - r->cached_tail;
		if (fill * EG_EV_SLOT >= cfg_events_wakeup_bytes && !READ_ONCE(r->kicked)) {
			r->kicked = 1;
			bpf_ringbuf_output(&eg_wake, &cpu, sizeof(cpu), 0);
		}
	}
	return 1;
lost:
	eg_count(EG_CNT_EVENTS_LOST);
	return 0;
}

/* ---- identities and policy ---- */

/* eg_identity resolves an address: its exact host entry if it has one,
 * else the longest prefix, else world. */
static __noinline __u32 eg_identity(__u32 slot, __u8 family, const __u8 *addr)
{
	struct eg_ipcache_key k = {};
	struct eg_host_key hk;
	struct eg_ipcache_value *v;
	void *hosts = bpf_map_lookup_elem(&eg_ipcache_hosts, &slot);
	void *ipcache;

	hk.family = family;
	eg_copy16(hk.addr, addr);
	if (hosts) {
		v = bpf_map_lookup_elem(hosts, &hk);
		if (v)
			return v->identity;
	}
	ipcache = bpf_map_lookup_elem(&eg_ipcache, &slot);
	if (!ipcache)
		return EG_IDENTITY_WORLD;
	k.prefixlen = 32 + (family == 4 ? 32 : 128);
	k.family = family;
	eg_copy16(k.addr, addr);
	v = bpf_map_lookup_elem(ipcache, &k);
	return v ? v->identity : EG_IDENTITY_WORLD;
}

static __always_inline int eg_range_find(const struct eg_range_value *rv, __u16 port,
					 struct eg_policy_value *out)
{
	__u32 lo = 0, hi = rv->count;
	int i;

	if (hi > EG_MAX_RANGES)
		hi = EG_MAX_RANGES;
	/* ceil(log2(EG_MAX_RANGES + 1)) steps of binary search. */
	for (i = 0; i < 6; i++) {
		__u32 mid;

		if (lo >= hi)
			break;
		mid = (lo + hi) / 2;
		if (mid >= EG_MAX_RANGES)
			break;
		if (port < rv->iv[mid].lo) {
			hi = mid;
		} else if (port > rv->iv[mid].hi) {
			lo = mid + 1;
		} else {
			out->verdict = rv->iv[mid].verdict;
			out->rule_id = rv->iv[mid].rule_id;
			return 1;
		}
	}
	return 0;
}

/* eg_range_probe searches one range-table value. Out of line: ranges are
 * the less common shape, and the key type must appear in a prototype to be
 * in BTF. */
static __noinline int eg_range_probe(void *rm, const struct eg_range_key *rk, __u16 port,
				     struct eg_policy_value *out)
{
	struct eg_range_value *rv = bpf_map_lookup_elem(rm, rk);

	return rv && eg_range_find(rv, port, out);
}

/* eg_policy_decide runs the probes of internal/ruleset/encode.go in order;
 * the first hit is final because overlaps were resolved in user space. k
 * holds the flow (endpoint, peer, direction, protocol, port) and is
 * rewritten for the wildcard probes. */
__noinline int eg_policy_decide(const struct eg_endpoint *ep, __u32 slot,
				 struct eg_policy_key *k, struct eg_policy_value *out)
{
	struct eg_range_key rk = {};
	struct eg_policy_value *v;
	void *pm, *rm;
	__u32 peer;
	__u16 port;
	__u8 shape;

	if (!ep || !k || !out)
		return 0;
	peer = k->peer_identity;
	port = k->port;
	shape = ep->shapes[k->direction & 1];
	out->verdict = EG_VERDICT_DENIED;
	out->rule_id = 0;
	if (!shape)
		return 1;
	pm = bpf_map_lookup_elem(&eg_policy, &slot);
	if (!pm)
		return 1;
	/* The range table only for endpoints with ranges (most have none). */
	rm = (shape & (EG_SHAPE_RANGE_PEER | EG_SHAPE_RANGE_ANY)) ?
		     bpf_map_lookup_elem(&eg_policy_ranges, &slot) : 0;
	rk.endpoint_id = k->endpoint_id;
	rk.peer_identity = peer;
	rk.direction = k->direction;
	rk.protocol = k->protocol;

	if (shape & EG_SHAPE_EXACT_PEER) {
		v = bpf_map_lookup_elem(pm, k);
		if (v)
			goto hit;
	}
	if ((shape & EG_SHAPE_RANGE_PEER) && rm && eg_range_probe(rm, &rk, port, out))
		return 1;
	k->peer_identity = EG_IDENTITY_ANY;
	rk.peer_identity = EG_IDENTITY_ANY;
	if (shape & EG_SHAPE_EXACT_ANY) {
		v = bpf_map_lookup_elem(pm, k);
		if (v)
			goto hit;
	}
	if ((shape & EG_SHAPE_RANGE_ANY) && rm && eg_range_probe(rm, &rk, port, out))
		return 1;
	k->protocol = 0;
	k->port = 0;
	k->peer_identity = peer;
	if (shape & EG_SHAPE_ANYPROTO_PEER) {
		v = bpf_map_lookup_elem(pm, k);
		if (v)
			goto hit;
	}
	k->peer_identity = EG_IDENTITY_ANY;
	if (shape & EG_SHAPE_ANYPROTO_ANY) {
		v = bpf_map_lookup_elem(pm, k);
		if (v)
			goto hit;
	}
	return 0;
hit:
	out->verdict = v->verdict;
	out->rule_id = v->rule_id;
	return 1;
}

/* ---- conntrack ---- */

static __always_inline __u64 eg_ct_lifetime(__u8 proto, __u8 state)
{
	__u32 j = cfg_ct_other_j;

	if (proto == IPPROTO_TCP) {
		if ((state & EG_CT_CLOSING) ||
		    ((state & EG_CT_FIN_ORIG) && (state & EG_CT_FIN_REPLY)))
			j = cfg_ct_tcp_close_j;
		else if (state & EG_CT_SEEN_REPLY)
			j = cfg_ct_tcp_established_j;
		else
			j = cfg_ct_tcp_syn_j;
	}
	return j;
}

/* eg_ct_refresh updates an entry for a packet of its flow. Writes are
 * limited to state changes and to moving the expiry by at least a second,
 * except for the (optional) counters. */
static __always_inline void eg_ct_refresh(struct eg_ct_entry *ct, const struct eg_pkt *p,
					  __u8 dir, __u64 now)
{
	__u8 reply = dir != ct->origin;
	__u8 st = ct->state, nst = st;
	__u64 exp;

	if (cfg_ct_accounting) {
		/* Atomic (BPF_ATOMIC add, a locked add on x86): both
		 * directions of a flow run on different CPUs at once, and a
		 * plain add loses counts then. Measured in BenchmarkVerdict
		 * (docs/ARCHITECTURE.md, "Conntrack"). reply is 0 or 1. */
		__sync_fetch_and_add(&ct->packets[reply], 1);
		__sync_fetch_and_add(&ct->bytes[reply], (__u64)p->len);
	}
	if (reply)
		nst |= EG_CT_SEEN_REPLY;
	if (p->proto == IPPROTO_TCP) {
		if ((p->tcp_flags & (EG_TCP_SYN | EG_TCP_ACK)) == EG_TCP_SYN && !reply &&
		    (st & (EG_CT_CLOSING | EG_CT_FIN_ORIG | EG_CT_FIN_REPLY)))
			nst = 0; /* the tuple is reused by a new connection */
		if (p->tcp_flags & EG_TCP_RST)
			nst |= EG_CT_CLOSING;
		if (p->tcp_flags & EG_TCP_FIN)
			nst |= reply ? EG_CT_FIN_REPLY : EG_CT_FIN_ORIG;
	}
	exp = now + eg_ct_lifetime(p->proto, nst);
	if (nst != st || exp > ct->expires + cfg_hz) {
		ct->state = nst;
		ct->expires = exp;
	}
}

/* The workload's and the peer's address of a packet. */
static __always_inline const __u8 *eg_local(const struct eg_pkt *p, __u8 dir)
{
	return dir == EG_DIR_INGRESS ? p->dst : p->src;
}

static __always_inline const __u8 *eg_remote(const struct eg_pkt *p, __u8 dir)
{
	return dir == EG_DIR_INGRESS ? p->src : p->dst;
}

/* A conntrack key of either family; family says which member is valid. */
struct eg_ct_key {
	union {
		struct eg_ct4_key k4;
		struct eg_ct6_key k6;
	};
	__u8 family;
};

/* Fills the conntrack key of p as seen from the endpoint. Every byte of
 * the member in use is written (it is hashed whole). */
static __always_inline void eg_ct_key_of(struct eg_ct_key *k, const struct eg_pkt *p, __u8 dir,
					 __u32 endpoint_id)
{
	const __u8 *local = eg_local(p, dir);
	const __u8 *remote = eg_remote(p, dir);
	struct eg_ct_tail t;

	t.endpoint_id = endpoint_id;
	t.local_port = dir == EG_DIR_INGRESS ? p->dport : p->sport;
	t.remote_port = dir == EG_DIR_INGRESS ? p->sport : p->dport;
	t.protocol = p->proto;
	t.kind = EG_CT_KIND_PORTS;
	t.pad = 0;
	if (p->proto == IPPROTO_ICMP || p->proto == IPPROTO_ICMPV6) {
		if (eg_icmp_is_echo(p->proto, p->icmp_type)) {
			t.kind = EG_CT_KIND_ECHO;
			t.local_port = p->sport; /* identifier */
			t.remote_port = 0;
		} else {
			/* One-way messages: only the same direction matches. */
			t.kind = EG_CT_KIND_ICMP;
			t.local_port = dir;
			t.remote_port = p->dport;
		}
	}
	k->family = p->family;
	if (p->family == 4) {
		k->k4.local = *(__be32 *)local;
		k->k4.remote = *(__be32 *)remote;
		k->k4.t = t;
	} else {
		eg_copy16(k->k6.local, local);
		eg_copy16(k->k6.remote, remote);
		k->k6.t = t;
	}
}

static __always_inline const struct eg_ct_tail *eg_ct_tail_of(const struct eg_ct_key *k)
{
	return k->family == 4 ? &k->k4.t : &k->k6.t;
}

/*
 * EG_CT_CALL(ret, k, fn, args...) sets ret to fn on the conntrack map of k's
 * family (eg_ct4 with the IPv4 key, eg_ct6 with the IPv6 one), each family's
 * call at a call site of its own. clang merges two identical calls into one
 * whose map pointer is chosen at run time; the verifier then cannot tell
 * which map a call is on and leaves it to the generic helper, which reaches
 * the map through an indirect call (a retpoline on many machines) instead of
 * inlining the hash lookup or calling the update directly. An empty asm that
 * differs by family after each call is a point clang cannot merge across.
 * TestMapCallsSpecialized checks the result on the loaded programs.
 */
#define EG_CT_CALL(ret, k, fn, ...)                                         \
	do {                                                                \
		if ((k)->family == 4) {                                     \
			ret = fn(&eg_ct4, &(k)->k4, ##__VA_ARGS__);         \
			asm volatile("/* eg_ct4 */" : "+r"(ret));           \
		} else {                                                    \
			ret = fn(&eg_ct6, &(k)->k6, ##__VA_ARGS__);         \
			asm volatile("/* eg_ct6 */" : "+r"(ret));           \
		}                                                           \
	} while (0)

static __always_inline struct eg_ct_entry *eg_ct_lookup(const struct eg_ct_key *k)
{
	struct eg_ct_entry *ct;

	EG_CT_CALL(ct, k, bpf_map_lookup_elem);
	return ct;
}

static __always_inline long eg_ct_update(const struct eg_ct_key *k, const struct eg_ct_entry *e, __u64 flags)
{
	long err;

	EG_CT_CALL(err, k, bpf_map_update_elem, e, flags);
	return err;
}

/* eg_ct_quota returns the endpoint's entry count in the key's map. */
static __always_inline __s64 *eg_ct_quota(const struct eg_ct_key *k, __u32 slot)
{
	struct eg_ct_count *c = bpf_map_lookup_elem(&eg_ct_ep, &slot);

	if (!c)
		return 0;
	return &c->count[k->family == 4 ? 0 : 1];
}

/*
 * eg_ct_insert tracks a new admitted flow. old is an expired entry of the
 * same tuple, if the lookup found one: it is replaced, and counts against
 * the endpoint already. Otherwise the entry is new: it must fit in the
 * endpoint's quota and in the table. Returns 0, or the counter saying why
 * the flow could not be tracked.
 */
static __always_inline __u32 eg_ct_insert(const struct eg_ct_key *k, const struct eg_ct_entry *old,
					  const struct eg_ct_entry *e, __u32 slot)
{
	__s64 *n;
	long err;

	if (old && !eg_ct_update(k, e, BPF_EXIST))
		return 0;
	/* No entry (or the agent's GC deleted the expired one meanwhile). */
	n = eg_ct_quota(k, slot);
	if (!n)
		return EG_CNT_CT_FULL;
	if (*n >= (k->family == 4 ? cfg_ct_ep_max4 : cfg_ct_ep_max6))
		return EG_CNT_CT_ENDPOINT_FULL;
	err = eg_ct_update(k, e, BPF_NOEXIST);
	if (err == -17) /* -EEXIST */
		return 0; /* another CPU tracked the same flow first: counted there */
	if (err)
		return EG_CNT_CT_FULL;
	__sync_fetch_and_add(n, 1);
	return 0;
}

static __always_inline void eg_ct_delete(const struct eg_ct_key *k, __u32 slot)
{
	long err;
	__s64 *n;

	EG_CT_CALL(err, k, bpf_map_delete_elem);
	n = eg_ct_quota(k, slot);
	if (!err && n)
		__sync_fetch_and_add(n, -1);
}

/* The policy port of a tracked flow: the destination port of its first
 * packet, for re-checking it against a new rule set. */
static __always_inline __u16 eg_ct_policy_port(const struct eg_ct_key *k, const struct eg_ct_entry *ct)
{
	const struct eg_ct_tail *t = eg_ct_tail_of(k);

	switch (t->kind) {
	case EG_CT_KIND_ECHO:
		return t->protocol == IPPROTO_ICMP ? (ICMP_ECHO << 8) : (ICMPV6_ECHO_REQUEST << 8);
	case EG_CT_KIND_ICMP:
		return t->remote_port;
	}
	return ct->origin == EG_DIR_INGRESS ? t->local_port : t->remote_port;
}

/*
 * eg_related looks up the flow an ICMP error is about: the quoted header
 * after the ICMP header is a packet of that flow, sent by the local side
 * if the error comes in, by the remote side if it goes out.
 */
__noinline int eg_related(struct __sk_buff *skb, const struct eg_pkt *p, __u8 dir,
			  __u32 endpoint_id, __u64 now)
{
	struct eg_pkt in = {};
	struct eg_ct_key k;
	struct eg_ct_entry *ct;
	__u32 off;

	if (!p)
		return 0;
	off = p->l4_off + 8;

	if (p->family == 4) {
		struct iphdr *ip = eg_hdr(skb, off, sizeof(*ip));

		if (!ip || ip->ihl < 5)
			return 0;
		in.family = 4;
		in.proto = ip->protocol;
		eg_set_v4(in.src, ip->saddr);
		eg_set_v4(in.dst, ip->daddr);
		off += ip->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = eg_hdr(skb, off, sizeof(*ip6));

		if (!ip6)
			return 0;
		in.family = 6;
		in.proto = ip6->nexthdr;
		eg_copy16(in.src, &ip6->saddr);
		eg_copy16(in.dst, &ip6->daddr);
		off += sizeof(*ip6);
	}
	switch (in.proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP: {
		__be16 *ports = eg_hdr(skb, off, 4);

		if (!ports)
			return 0;
		in.sport = bpf_ntohs(ports[0]);
		in.dport = bpf_ntohs(ports[1]);
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		__u8 *ih = eg_hdr(skb, off, 8);

		if (!ih)
			return 0;
		in.icmp_type = ih[0];
		in.icmp_code = ih[1];
		in.sport = bpf_ntohs(*(__be16 *)(ih + 4));
		in.dport = (__u16)ih[0] << 8 | ih[1];
		break;
	}
	default:
		return 0;
	}
	/* The quoted packet travelled the other way round. */
	eg_ct_key_of(&k, &in, dir ^ 1, endpoint_id);
	ct = eg_ct_lookup(&k);
	return ct && ct->expires > now;
}

/* ---- neighbour discovery ---- */

/*
 * eg_nd_link_scoped says whether an ICMPv6 neighbour discovery (133-137) or
 * MLD (130-132, 143) message is link plumbing that passes before policy
 * and the spoofing check. Only messages that cannot leave the link do;
 * anything else in these types (a "neighbour solicitation" to a global
 * address off the link, carrying data) is a packet like any other. dir is
 * the endpoint's direction; local is its side of the packet (the source
 * of what it sends, the destination of what it receives).
 *
 * - Never a fragment (RFC 6980), never ICMPv6 inside IPv4.
 * - MLD: hop limit 1, a link-local or unspecified source, an ff02::/16
 *   destination (RFC 2710 section 3, RFC 3810 section 5).
 * - Neighbour discovery: hop limit 255 (RFC 4861: receivers discard
 *   anything less, and a router that forwards it decrements it). The
 *   local side is link-local, the endpoint's own address (the spoofing
 *   check's lookup), the unspecified source of duplicate address
 *   detection, or link-scope multicast to the endpoint. The remote side:
 *   of what the endpoint receives, any address, since hop limit 255 on
 *   receipt proves it was sent on this link (a global one is remembered
 *   as a neighbour heard on this interface); of what it sends, link-local,
 *   ff02::/16, or a neighbour heard on this interface. Linux sends
 *   solicitations from the global address of the packet that prompted
 *   them, and answers to it, so global addresses on the link must pass.
 *
 * Global (verified once, on its own): see eg_parse.
 */
__noinline int eg_nd_link_scoped(const struct eg_pkt *p, const struct eg_endpoint *ep, __u32 slot, __u32 dir)
{
	struct eg_nd_key nk = {};
	struct eg_nd_entry ne = {};
	struct eg_nd_entry *n;
	const __u8 *local, *remote;
	__u64 now;

	if (!p || !ep)
		return 0;
	if (p->family != 6 || p->frag != EG_FRAG_NONE)
		return 0;
	if (eg_icmp6_is_mld(p->icmp_type))
		return p->hop_limit == 1 &&
		       (eg_ip6_is_link_local(p->src) || eg_ip6_is_unspecified(p->src)) &&
		       eg_ip6_is_ll_multicast(p->dst);
	if (p->hop_limit != 255)
		return 0;
	local = dir == EG_DIR_INGRESS ? p->dst : p->src;
	remote = dir == EG_DIR_INGRESS ? p->src : p->dst;
	if (!eg_ip6_is_link_local(local) &&
	    !(dir == EG_DIR_INGRESS ? eg_ip6_is_ll_multicast(local) : eg_ip6_is_unspecified(local)) &&
	    eg_identity(slot, 6, local) != ep->identity)
		return 0;
	if (eg_ip6_is_link_local(remote))
		return 1;
	if (dir == EG_DIR_INGRESS) {
		if (eg_ip6_is_unspecified(remote))
			return 1;
		nk.ifindex = ep->ifindex;
		eg_copy16(nk.addr, remote);
		ne.expires = bpf_jiffies64() + (__u64)cfg_hz * EG_ND_NEIGH_SECS;
		bpf_map_update_elem(&eg_nd_neigh, &nk, &ne, BPF_ANY);
		return 1;
	}
	if (eg_ip6_is_ll_multicast(remote))
		return 1;
	nk.ifindex = ep->ifindex;
	eg_copy16(nk.addr, remote);
	n = bpf_map_lookup_elem(&eg_nd_neigh, &nk);
	now = bpf_jiffies64();
	if (!n || n->expires <= now)
		return 0;
	n->expires = now + (__u64)cfg_hz * EG_ND_NEIGH_SECS;
	return 1;
}

/* ---- fragments ---- */

static __always_inline void eg_frag_key_of(struct eg_frag_key *k, const struct eg_pkt *p, __u32 endpoint_id)
{
	eg_copy16(k->src, p->src);
	eg_copy16(k->dst, p->dst);
	k->id = p->frag_id;
	k->endpoint_id = endpoint_id;
	k->protocol = p->proto;
	k->family = p->family;
	k->pad = 0;
}

static __noinline void eg_frag_store(const struct eg_pkt *p, __u32 endpoint_id, __u8 verdict, __u64 now)
{
	struct eg_frag_key k = {};
	struct eg_frag_entry e = {};

	eg_frag_key_of(&k, p, endpoint_id);
	e.expires = now + cfg_frag_timeout_j;
	e.verdict = verdict;
	bpf_map_update_elem(&eg_frags, &k, &e, BPF_ANY);
}

static __always_inline void eg_frag_remember(const struct eg_pkt *p, __u32 endpoint_id, __u8 verdict, __u64 now)
{
	if (p->frag == EG_FRAG_FIRST)
		eg_frag_store(p, endpoint_id, verdict, now);
}

/* ---- the program ---- */

/* eg_endpoint_find probes the direct-mapped endpoint array (maps.h). */
static __always_inline int eg_endpoint_find(void *eps, __u32 ifindex, struct eg_endpoint *out)
{
	int i;

	for (i = 0; i < EG_EP_PROBES; i++) {
		__u32 k = (ifindex + i) & (EG_EP_SLOTS - 1);
		struct eg_endpoint *e = bpf_map_lookup_elem(eps, &k);

		if (!e || e->ifindex == 0)
			return 0;
		if (e->ifindex == ifindex) {
			*out = *e;
			return 1;
		}
	}
	return 0;
}

static __always_inline int eg_finish(const struct eg_pkt *p, struct eg_verdict_ctx *v, int emit)
{
	eg_count_verdict(v->verdict, v->dir);
	if (emit)
		eg_emit(p, v);
	return v->verdict == EG_VERDICT_DENIED ? TCX_DROP : TCX_NEXT;
}

static __always_inline __u8 eg_downgrade(__u8 mode, __u8 verdict)
{
	if (mode == EG_MODE_MONITOR && verdict == EG_VERDICT_DENIED)
		return EG_VERDICT_WOULD_DENY;
	return verdict;
}

/* eg_touch reads a byte at p and drops it: a prefetch of its line. */
static __always_inline void eg_touch(const void *p)
{
	if (p) {
		__u8 b = *(volatile const __u8 *)p;

		asm volatile("" :: "r"(b));
	}
}

/*
 * eg_prefetch_endpoint starts the loads of the lines eg_process reads first,
 * before it needs them: the endpoint's first probe slot in both
 * generations' tables. In the real path these lines are cold (the packet
 * follows the scheduler and the stack, not the previous packet), and
 * eg_process reads them as a chain, each address from the line before
 * (the state word picks the generation, the generation's table holds the
 * slot): loaded here, independent of the state word, the misses overlap.
 * Only a prefetch: eg_process reads everything again in its own order.
 */
static __always_inline void eg_prefetch_endpoint(__u32 ifindex)
{
	__u32 k0 = 0, k1 = 1, i = ifindex & (EG_EP_SLOTS - 1);
	void *t0 = bpf_map_lookup_elem(&eg_endpoints, &k0);
	void *t1 = bpf_map_lookup_elem(&eg_endpoints, &k1);

	if (t0)
		eg_touch(bpf_map_lookup_elem(t0, &i));
	if (t1)
		eg_touch(bpf_map_lookup_elem(t1, &i));
}

static __always_inline int eg_process(struct __sk_buff *skb, __u8 hook_ingress)
{
	struct eg_endpoint ep = {};
	struct eg_verdict_ctx v = {};
	struct eg_policy_value pv;
	struct eg_policy_key q = {};
	struct eg_ct_key key;   /* the member in use is written whole by eg_ct_key_of */
	struct eg_ct_entry *ct;
	struct eg_pkt p;        /* every byte written by the parser */
	struct eg_generation *st;
	void *eps;
	__u32 zero = 0, word = 0, slot, gen, ifindex = skb->ifindex;
	__u64 now;
	int have_ep, ret;

	eg_prefetch_endpoint(ifindex);
	st = bpf_map_lookup_elem(&eg_state, &zero);
	if (st)
		word = st->word;
	slot = word & 1;
	gen = word >> 1;

	eps = bpf_map_lookup_elem(&eg_endpoints, &slot);
	have_ep = eps && eg_endpoint_find(eps, ifindex, &ep);
	if (!have_ep) {
		/* Programs still on an interface whose endpoint is gone, or
		 * not there yet: the node's default mode, no rules. */
		ep.ifindex = ifindex;
		ep.mode = cfg_default_mode;
		ep.flags = EG_EP_F_HOST;
	}
	/* On a container's host-side veth, tc ingress carries what the
	 * workload sends: its egress. */
	v.dir = hook_ingress ? EG_DIR_INGRESS : EG_DIR_EGRESS;
	if (!(ep.flags & EG_EP_F_HOST))
		v.dir ^= 1;
	v.ifindex = ifindex;
	v.endpoint_id = ep.id;
	v.local_identity = ep.identity;

	if (!(ep.flags & EG_EP_F_L3) && eg_parse_fast(skb, &p)) {
		ret = EG_PARSE_IP;
	} else {
		__builtin_memset(&p, 0, sizeof(p));
		ret = eg_parse(skb, ep.flags & EG_EP_F_L3, &p);
	}
	switch (ret) {
	case EG_PARSE_IP:
		break;
	case EG_PARSE_ARP:
		eg_count(EG_CNT_NEIGHBOR);
		return TCX_NEXT;
	case EG_PARSE_NON_IP:
		eg_count(EG_CNT_NON_IP);
		return TCX_NEXT;
	default:
		eg_count(EG_CNT_MALFORMED);
		v.verdict = eg_downgrade(ep.mode, EG_VERDICT_DENIED);
		v.reason = EG_REASON_MALFORMED;
		return eg_finish(&p, &v, 0);
	}
	/* Neighbour discovery and MLD that cannot leave the link pass; in
	 * any other shape they go on like any packet. */
	if (p.proto == IPPROTO_ICMPV6 && eg_icmp6_is_neighbor(p.icmp_type) &&
	    eg_nd_link_scoped(&p, &ep, slot, v.dir)) {
		eg_count(EG_CNT_NEIGHBOR);
		return TCX_NEXT;
	}

	now = bpf_jiffies64();
	v.now = now;
	if (p.frag != EG_FRAG_NONE)
		eg_count(EG_CNT_FRAGMENTS);
	if (p.frag == EG_FRAG_LATER) {
		struct eg_frag_key fk = {};
		struct eg_frag_entry *fe;

		eg_frag_key_of(&fk, &p, ep.id);
		fe = bpf_map_lookup_elem(&eg_frags, &fk);
		if (fe && fe->expires > now && fe->verdict != EG_VERDICT_DENIED)
			return TCX_NEXT;
		v.peer_identity = eg_identity(slot, p.family, eg_remote(&p, v.dir));
		v.verdict = eg_downgrade(ep.mode, EG_VERDICT_DENIED);
		v.reason = EG_REASON_FRAGMENT;
		return eg_finish(&p, &v, 1);
	}

	if (!have_ep) {
		eg_count(EG_CNT_NO_ENDPOINT);
		v.verdict = eg_downgrade(ep.mode, EG_VERDICT_DENIED);
		v.reason = EG_REASON_NO_ENDPOINT;
		return eg_finish(&p, &v, 1);
	}

	eg_ct_key_of(&key, &p, v.dir, ep.id);
	ct = eg_ct_lookup(&key);
	if (ct && ct->expires > now) {
		if (ct->generation == gen || !cfg_ct_revalidate) {
			eg_ct_refresh(ct, &p, v.dir, now);
			eg_count(EG_CNT_ESTABLISHED);
			eg_frag_remember(&p, ep.id, ct->verdict, now);
			return TCX_NEXT;
		}
		/* The rule set changed since this flow was admitted: decide
		 * it again, as its first packet would be decided now. */
		v.peer_identity = eg_identity(slot, p.family, eg_remote(&p, v.dir));
		q.endpoint_id = ep.id;
		q.peer_identity = v.peer_identity;
		q.direction = ct->origin;
		q.protocol = p.proto;
		q.port = eg_ct_policy_port(&key, ct);
		eg_policy_decide(&ep, slot, &q, &pv);
		pv.verdict = eg_downgrade(ep.mode, pv.verdict);
		eg_count(EG_CNT_REVALIDATED);
		v.verdict = pv.verdict;
		v.rule_id = pv.rule_id;
		v.reason = EG_REASON_REVALIDATED;
		if (pv.verdict == EG_VERDICT_DENIED) {
			eg_ct_delete(&key, ep.ct_slot);
			return eg_finish(&p, &v, 1);
		}
		if (pv.verdict != ct->verdict || pv.rule_id != ct->rule_id) {
			/* Still admitted, for another reason: report it. */
			ct->verdict = pv.verdict;
			ct->rule_id = pv.rule_id;
			eg_emit(&p, &v);
		}
		ct->peer_identity = v.peer_identity;
		ct->generation = gen;
		eg_ct_refresh(ct, &p, v.dir, now);
		eg_frag_remember(&p, ep.id, pv.verdict, now);
		return TCX_NEXT;
	}

	if ((p.proto == IPPROTO_ICMP || p.proto == IPPROTO_ICMPV6) &&
	    eg_icmp_is_error(p.proto, p.icmp_type) && eg_related(skb, &p, v.dir, ep.id, now)) {
		eg_count(EG_CNT_RELATED);
		return TCX_NEXT;
	}

	/* A new flow. Whose traffic is it? In host mode, only the node's own
	 * (by its local address); in container mode everything on the
	 * interface is the workload's, and what it sends must carry its own
	 * source address. */
	if (((ep.flags & EG_EP_F_HOST) || v.dir == EG_DIR_EGRESS) &&
	    eg_identity(slot, p.family, eg_local(&p, v.dir)) != ep.identity) {
		if (ep.flags & EG_EP_F_HOST) {
			/* Not the node's own traffic (routed through it): the
			 * workload it belongs to is enforced on its own
			 * interface. */
			eg_count(EG_CNT_FORWARDED);
			return TCX_NEXT;
		}
		eg_count(EG_CNT_SPOOFED);
		v.peer_identity = eg_identity(slot, p.family, eg_remote(&p, v.dir));
		v.verdict = eg_downgrade(ep.mode, EG_VERDICT_DENIED);
		v.reason = EG_REASON_SPOOFED;
		return eg_finish(&p, &v, 1);
	}
	v.peer_identity = eg_identity(slot, p.family, eg_remote(&p, v.dir));
	q.endpoint_id = ep.id;
	q.peer_identity = v.peer_identity;
	q.direction = v.dir;
	q.protocol = p.proto;
	q.port = p.dport; /* 0 for protocols without ports */
	eg_policy_decide(&ep, slot, &q, &pv);
	v.verdict = eg_downgrade(ep.mode, pv.verdict);
	v.rule_id = pv.rule_id;
	v.reason = EG_REASON_POLICY;

	if (v.verdict != EG_VERDICT_DENIED) {
		struct eg_ct_entry e;
		__u32 full;

		/* Every field written, none twice (the entry is one cache line). */
		e.expires = 0;
		e.created = now;
		e.packets[0] = cfg_ct_accounting ? 1 : 0;
		e.packets[1] = 0;
		e.bytes[0] = cfg_ct_accounting ? p.len : 0;
		e.bytes[1] = 0;
		e.generation = gen;
		e.rule_id = v.rule_id;
		e.peer_identity = v.peer_identity;
		e.verdict = v.verdict;
		e.origin = v.dir;
		e.state = (p.proto == IPPROTO_TCP && (p.tcp_flags & EG_TCP_RST)) ? EG_CT_CLOSING : 0;
		e.pad = 0;
		e.expires = now + eg_ct_lifetime(p.proto, e.state);
		full = eg_ct_insert(&key, ct, &e, ep.ct_slot);
		if (full) {
			/* Fail closed: a flow the datapath cannot track would
			 * have its replies denied, and one endpoint's flood must
			 * not pass untracked. Established flows are untouched. */
			eg_count(full);
			v.verdict = eg_downgrade(ep.mode, EG_VERDICT_DENIED);
			v.reason = EG_REASON_CT_FULL;
			return eg_finish(&p, &v, 1);
		}
		eg_frag_remember(&p, ep.id, v.verdict, now);
	}
	return eg_finish(&p, &v, 1);
}

/*
 * eg_ct_adjust adds a signed delta to one endpoint's conntrack count. The
 * agent runs it with BPF_PROG_TEST_RUN (it is attached nowhere) after its
 * GC deleted entries: an atomic add, where a map update from user space
 * would overwrite the datapath's concurrent counts. Returns 0, or 2 for a
 * bad request.
 */
SEC("tc")
int eg_ct_adjust(struct __sk_buff *skb)
{
	struct eg_ct_adjust_req req;
	struct eg_ct_count *c;

	if (bpf_skb_load_bytes(skb, 0, &req, sizeof(req)) || req.family > 1)
		return 2;
	c = bpf_map_lookup_elem(&eg_ct_ep, &req.slot);
	if (!c)
		return 2;
	__sync_fetch_and_add(&c->count[req.family & 1], req.delta);
	return 0;
}

SEC("tcx/ingress")
int eg_tc_ingress(struct __sk_buff *skb)
{
	return eg_process(skb, 1);
}

SEC("tcx/egress")
int eg_tc_egress(struct __sk_buff *skb)
{
	return eg_process(skb, 0);
}
