// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Copyright The Eastguard Authors */

/*
 * Packet parsing. Headers are read with direct packet access; when a header
 * is not in the linear part of the skb it is pulled in first, so GSO/GRO
 * packets are parsed like any other. Every header read is bounds-checked:
 * a packet too short for the header it claims is malformed, never guessed.
 */
#ifndef EG_PACKET_H
#define EG_PACKET_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Headers past this offset are not parsed (IPv6 extension header chains
 * longer than this are treated as malformed). */
#define EG_MAX_HDR_OFF  512
#define EG_MAX_EXTHDRS  6
#define EG_MAX_VLANS    2

/* ICMP and ICMPv6 types (linux/icmp.h pulls in libc headers). */
#define ICMP_ECHOREPLY       0
#define ICMP_DEST_UNREACH    3
#define ICMP_SOURCE_QUENCH   4
#define ICMP_ECHO            8
#define ICMP_TIME_EXCEEDED   11
#define ICMP_PARAMETERPROB   12
#define ICMPV6_DEST_UNREACH  1
#define ICMPV6_PKT_TOOBIG    2
#define ICMPV6_TIME_EXCEED   3
#define ICMPV6_PARAMPROB     4
#define ICMPV6_ECHO_REQUEST  128
#define ICMPV6_ECHO_REPLY    129

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

enum eg_parse {
	EG_PARSE_IP        = 0,
	EG_PARSE_ARP       = 1,
	EG_PARSE_NON_IP    = 2,
	EG_PARSE_MALFORMED = 3,
};

enum eg_frag {
	EG_FRAG_NONE  = 0,
	EG_FRAG_FIRST = 1, /* offset 0, more fragments follow: has the L4 header */
	EG_FRAG_LATER = 2, /* offset > 0: no L4 header */
};

struct eg_pkt {
	__u8  src[16];
	__u8  dst[16];
	__u32 len;
	__u32 l4_off;
	__u32 frag_id;
	__u16 sport;      /* host order; ICMP echo: identifier */
	__u16 dport;      /* host order; ICMP: type<<8|code */
	__u8  family;     /* 4 or 6 */
	__u8  proto;
	__u8  tcp_flags;
	__u8  frag;       /* enum eg_frag */
	__u8  icmp_type;
	__u8  icmp_code;
	__u8  hop_limit;  /* IPv6 only, and only where eg_parse ran (never TCP or UDP) */
	__u8  pad;
};

/* TCP flag bits as in byte 13 of the header. */
#define EG_TCP_FIN 0x01
#define EG_TCP_SYN 0x02
#define EG_TCP_RST 0x04
#define EG_TCP_ACK 0x10

/* skb->data and data_end are 32-bit context fields the verifier rewrites
 * into 64-bit pointer loads. If clang keeps one in a register across calls
 * it may spill it and re-zero-extend it on reload, which turns the pointer
 * into a scalar the verifier rejects; volatile reads make every use load
 * it afresh. */
#define EG_DATA(skb)     ((void *)(long)(*(volatile __u32 *)&(skb)->data))
#define EG_DATA_END(skb) ((void *)(long)(*(volatile __u32 *)&(skb)->data_end))

/* Bytes of headers the parser may read: Ethernet, two VLAN tags, IPv6 with
 * extension headers, the L4 header, and for ICMP errors the quoted IP and
 * L4 headers. */
#define EG_PULL_LEN 256

/* eg_need_pull says whether the packet has bytes the parser may need that
 * are not in the linear area. Pulling copies them in; GSO packets, whose
 * linear area holds only headers, are never pulled unless a header itself
 * is out of reach (see eg_parse). */
static __always_inline __u32 eg_need_pull(struct __sk_buff *skb)
{
	__u32 want = skb->len < EG_PULL_LEN ? skb->len : EG_PULL_LEN;

	if ((__u32)(EG_DATA_END(skb) - EG_DATA(skb)) < want)
		return want;
	return 0;
}
/* eg_hdr returns a pointer to size bytes at off, or NULL if the packet (or
 * its readable part) is shorter. */
static __always_inline void *eg_hdr(struct __sk_buff *skb, __u32 off, __u32 size)
{
	void *data = EG_DATA(skb);
	void *end = EG_DATA_END(skb);

	if (off > EG_MAX_HDR_OFF)
		return NULL;
	if (data + off + size > end)
		return NULL;
	return data + off;
}

static __always_inline void eg_copy16(__u8 *dst, const void *src)
{
	__builtin_memcpy(dst, src, 16);
}

static __always_inline void eg_set_v4(__u8 *dst, __be32 addr)
{
	__u32 *d = (__u32 *)dst;

	d[0] = addr;
	d[1] = 0;
	d[2] = 0;
	d[3] = 0;
}

/* Reads the L4 header of p at p->l4_off: ports, TCP flags, ICMP type and
 * code. Returns EG_PARSE_MALFORMED when the header is truncated. */
static __always_inline int eg_parse_l4(struct __sk_buff *skb, struct eg_pkt *p)
{
	switch (p->proto) {
	case IPPROTO_TCP: {
		__u8 *th = eg_hdr(skb, p->l4_off, 20);

		if (!th)
			return EG_PARSE_MALFORMED;
		p->sport = bpf_ntohs(*(__be16 *)th);
		p->dport = bpf_ntohs(*(__be16 *)(th + 2));
		p->tcp_flags = th[13];
		if ((th[12] >> 4) < 5) /* data offset below the minimum header */
			return EG_PARSE_MALFORMED;
		break;
	}
	case IPPROTO_UDP: {
		struct udphdr *uh = eg_hdr(skb, p->l4_off, sizeof(*uh));

		if (!uh)
			return EG_PARSE_MALFORMED;
		p->sport = bpf_ntohs(uh->source);
		p->dport = bpf_ntohs(uh->dest);
		break;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6: {
		/* type, code, checksum, then identifier for echo. */
		__u8 *ih = eg_hdr(skb, p->l4_off, 8);

		if (!ih)
			return EG_PARSE_MALFORMED;
		p->icmp_type = ih[0];
		p->icmp_code = ih[1];
		p->sport = bpf_ntohs(*(__be16 *)(ih + 4));
		p->dport = (__u16)ih[0] << 8 | ih[1];
		break;
	}
	default:
		/* No ports: policy matches these by protocol only. */
		break;
	}
	return EG_PARSE_IP;
}

static __always_inline int eg_parse_ipv4(struct __sk_buff *skb, __u32 off, struct eg_pkt *p)
{
	struct iphdr *ip = eg_hdr(skb, off, sizeof(*ip));
	__u32 ihl, tot;
	__u16 frag;

	if (!ip)
		return EG_PARSE_MALFORMED;
	if (ip->version != 4 || ip->ihl < 5)
		return EG_PARSE_MALFORMED;
	ihl = ip->ihl * 4;
	tot = bpf_ntohs(ip->tot_len);
	if (tot < ihl || off + tot > skb->len)
		return EG_PARSE_MALFORMED;
	p->family = 4;
	p->proto = ip->protocol;
	eg_set_v4(p->src, ip->saddr);
	eg_set_v4(p->dst, ip->daddr);
	frag = bpf_ntohs(ip->frag_off);
	p->frag_id = bpf_ntohs(ip->id);
	if (frag & 0x1fff)
		p->frag = EG_FRAG_LATER;
	else if (frag & 0x2000)
		p->frag = EG_FRAG_FIRST;
	p->l4_off = off + ihl;
	if (p->frag == EG_FRAG_LATER)
		return EG_PARSE_IP;
	return eg_parse_l4(skb, p);
}

struct eg_ipv6_frag_hdr {
	__u8   nexthdr;
	__u8   reserved;
	__be16 frag_off;
	__be32 identification;
};

static __always_inline int eg_parse_ipv6(struct __sk_buff *skb, __u32 off, struct eg_pkt *p)
{
	struct ipv6hdr *ip6 = eg_hdr(skb, off, sizeof(*ip6));
	__u8 nexthdr;
	int i;

	if (!ip6)
		return EG_PARSE_MALFORMED;
	if (ip6->version != 6)
		return EG_PARSE_MALFORMED;
	if (off + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > skb->len)
		return EG_PARSE_MALFORMED;
	p->family = 6;
	p->hop_limit = ip6->hop_limit;
	eg_copy16(p->src, &ip6->saddr);
	eg_copy16(p->dst, &ip6->daddr);
	nexthdr = ip6->nexthdr;
	off += sizeof(*ip6);

	for (i = 0; i < EG_MAX_EXTHDRS; i++) {
		switch (nexthdr) {
		case IPPROTO_HOPOPTS:
		case IPPROTO_ROUTING:
		case IPPROTO_DSTOPTS: {
			__u8 *oh = eg_hdr(skb, off, 2);

			if (!oh)
				return EG_PARSE_MALFORMED;
			nexthdr = oh[0];
			off += ((__u32)oh[1] + 1) * 8;
			continue;
		}
		case IPPROTO_AH: {
			__u8 *ah = eg_hdr(skb, off, 2);

			if (!ah)
				return EG_PARSE_MALFORMED;
			nexthdr = ah[0];
			off += ((__u32)ah[1] + 2) * 4;
			continue;
		}
		case IPPROTO_FRAGMENT: {
			struct eg_ipv6_frag_hdr *fh = eg_hdr(skb, off, sizeof(*fh));
			__u16 fo;

			if (!fh)
				return EG_PARSE_MALFORMED;
			nexthdr = fh->nexthdr;
			fo = bpf_ntohs(fh->frag_off);
			p->frag_id = bpf_ntohl(fh->identification);
			off += sizeof(*fh);
			if (fo & 0xfff8) {
				p->frag = EG_FRAG_LATER;
				p->proto = nexthdr;
				p->l4_off = off;
				return EG_PARSE_IP;
			}
			if (fo & 1)
				p->frag = EG_FRAG_FIRST;
			continue;
		}
		default:
			goto l4;
		}
	}
	/* Still inside an extension header chain after EG_MAX_EXTHDRS. */
	return EG_PARSE_MALFORMED;
l4:
	p->proto = nexthdr;
	p->l4_off = off;
	return eg_parse_l4(skb, p);
}

static __always_inline int eg_parse_once(struct __sk_buff *skb, int l3, struct eg_pkt *p)
{
	__u32 off = 0;
	__u16 proto;
	int i;

	__builtin_memset(p, 0, sizeof(*p));
	p->len = skb->len;
	if (l3) {
		proto = bpf_ntohs(skb->protocol);
	} else {
		struct ethhdr *eth = eg_hdr(skb, 0, sizeof(*eth));

		if (!eth)
			return EG_PARSE_MALFORMED;
		proto = bpf_ntohs(eth->h_proto);
		off = sizeof(*eth);
		for (i = 0; i < EG_MAX_VLANS; i++) {
			__be16 *tag;

			if (proto != ETH_P_8021Q && proto != ETH_P_8021AD)
				break;
			/* TCI, then the encapsulated ethertype. */
			tag = eg_hdr(skb, off, 4);
			if (!tag)
				return EG_PARSE_MALFORMED;
			proto = bpf_ntohs(tag[1]);
			off += 4;
		}
	}
	switch (proto) {
	case ETH_P_IP:
		return eg_parse_ipv4(skb, off, p);
	case ETH_P_IPV6:
		return eg_parse_ipv6(skb, off, p);
	case ETH_P_ARP:
		return EG_PARSE_ARP;
	}
	return EG_PARSE_NON_IP;
}

/* eg_parse fills p from the packet. l3 says the device has no Ethernet
 * header. A header that is not in the linear area is pulled in and the
 * packet parsed again; only a packet that is malformed with all its bytes
 * readable is malformed. It is a global function on purpose: the verifier
 * checks it once, on its own, and the caller then sees its outputs as
 * unknown values instead of exploring every combination of parser
 * constants again. */
__noinline int eg_parse(struct __sk_buff *skb, int l3, struct eg_pkt *p)
{
	__u32 want;
	int ret;

	if (!p)
		return EG_PARSE_MALFORMED;
	ret = eg_parse_once(skb, l3, p);
	if (ret != EG_PARSE_MALFORMED)
		return ret;
	want = eg_need_pull(skb);
	if (!want || bpf_skb_pull_data(skb, want) < 0)
		return ret;
	return eg_parse_once(skb, l3, p);
}

/*
 * eg_parse_fast handles the common frame in line, without the call into
 * eg_parse: Ethernet, then IPv4 without options or IPv6 without extension
 * headers, not a fragment, then TCP or UDP, all in the linear area. It
 * returns 1 when it filled all of p, 0 when eg_parse must decide. Every
 * check eg_parse makes for such a frame is made here too, so the two never
 * disagree (the BPF tests run both on the same frames).
 */
static __always_inline int eg_parse_fast(struct __sk_buff *skb, struct eg_pkt *p)
{
	void *data = EG_DATA(skb);
	void *end = EG_DATA_END(skb);
	struct ethhdr *eth = data;
	__u32 len = skb->len;
	__u8 *l4;
	__u8 proto;

	if (data + sizeof(*eth) > end)
		return 0;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + sizeof(*eth);
		__u32 tot;

		if ((void *)(ip + 1) > end)
			return 0;
		if (*(__u8 *)ip != 0x45 || (ip->frag_off & bpf_htons(0x3fff)))
			return 0; /* options, not version 4, or a fragment */
		tot = bpf_ntohs(ip->tot_len);
		if (tot < sizeof(*ip) || sizeof(*eth) + tot > len)
			return 0;
		proto = ip->protocol;
		eg_set_v4(p->src, ip->saddr);
		eg_set_v4(p->dst, ip->daddr);
		p->family = 4;
		p->frag_id = 0;
		l4 = (void *)(ip + 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + sizeof(*eth);

		if ((void *)(ip6 + 1) > end)
			return 0;
		if ((*(__u8 *)ip6 >> 4) != 6 ||
		    sizeof(*eth) + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > len)
			return 0;
		proto = ip6->nexthdr;
		eg_copy16(p->src, &ip6->saddr);
		eg_copy16(p->dst, &ip6->daddr);
		p->family = 6;
		p->frag_id = 0;
		l4 = (void *)(ip6 + 1);
	} else {
		return 0;
	}
	if (proto == IPPROTO_TCP) {
		if ((void *)(l4 + 20) > end || (l4[12] >> 4) < 5)
			return 0;
		p->tcp_flags = l4[13];
	} else if (proto == IPPROTO_UDP) {
		if ((void *)(l4 + 8) > end)
			return 0;
		p->tcp_flags = 0;
	} else {
		return 0;
	}
	p->sport = bpf_ntohs(*(__be16 *)l4);
	p->dport = bpf_ntohs(*(__be16 *)(l4 + 2));
	p->proto = proto;
	p->len = len;
	p->l4_off = l4 - (__u8 *)data;
	p->frag = EG_FRAG_NONE;
	p->icmp_type = 0;
	p->icmp_code = 0;
	p->hop_limit = 0; /* only ICMPv6 needs it, and ICMPv6 is not parsed here */
	p->pad = 0;
	return 1;
}

/* ICMP(v6) message classes. */
static __always_inline int eg_icmp_is_error(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == ICMP_DEST_UNREACH || type == ICMP_TIME_EXCEEDED ||
		       type == ICMP_PARAMETERPROB || type == ICMP_SOURCE_QUENCH;
	return type == ICMPV6_DEST_UNREACH || type == ICMPV6_PKT_TOOBIG ||
	       type == ICMPV6_TIME_EXCEED || type == ICMPV6_PARAMPROB;
}

static __always_inline int eg_icmp_is_echo(__u8 proto, __u8 type)
{
	if (proto == IPPROTO_ICMP)
		return type == ICMP_ECHO || type == ICMP_ECHOREPLY;
	return type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY;
}

/* IPv6 neighbour discovery (133-137) and multicast listener messages
 * (130-132, 143): link plumbing that must pass for IPv6 to work at all,
 * but only in the shapes that cannot leave the link (eg_nd_link_scoped). */
static __always_inline int eg_icmp6_is_neighbor(__u8 type)
{
	return (type >= 130 && type <= 137) || type == 143;
}

static __always_inline int eg_icmp6_is_mld(__u8 type)
{
	return (type >= 130 && type <= 132) || type == 143;
}

/* IPv6 address classes. Addresses in struct eg_pkt are 4-byte aligned. */
static __always_inline int eg_ip6_is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80; /* fe80::/10 */
}

static __always_inline int eg_ip6_is_ll_multicast(const __u8 *a)
{
	return a[0] == 0xff && a[1] == 0x02; /* ff02::/16 */
}

static __always_inline int eg_ip6_is_unspecified(const __u8 *a)
{
	const __u32 *w = (const __u32 *)a;

	return (w[0] | w[1] | w[2] | w[3]) == 0;
}

#endif /* EG_PACKET_H */
