//go:build ignore

// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
//
// Ambit's traffic redirection: steers the TCP connections of enrolled pods
// into ztunnel's listeners in the node's network namespace, the way TPROXY
// does, with bpf_sk_assign at TC ingress.
//
//   ambit_from_pod   on the ingress of each pod's host-side veth: packets
//                    the pod sends. From an enrolled pod: outbound capture
//                    (15001). To an enrolled pod on this node from one that
//                    is not: inbound capture (15006, or 15008 for HBONE).
//   ambit_from_wire  on the ingress of the node's uplink: packets from
//                    other nodes to enrolled pods here: inbound capture.
//
// Only the first packet of a connection (SYN) is assigned to a listener;
// later packets are marked so that policy routing delivers them locally,
// where the kernel finds ztunnel's accepted socket by its 4-tuple (the
// socket is transparent, bound to the original destination). A flow with
// no ztunnel socket that is not a SYN (a connection opened before the pod
// was enrolled) passes unchanged. A SYN that should be captured while
// ztunnel's listener is missing is dropped: enrolled traffic fails closed.
//
// Traffic that ztunnel and the kubelet originate in the node namespace
// leaves through egress and is never seen here, so there is no loop and
// probes pass.
//
// Chaining with other programs on the same hook (a primary CNI's): what
// the programs do not take they return as NEXT (TCX_NEXT under TCX, the
// same value as TC_ACT_UNSPEC under clsact), so that the programs after
// Ambit's still see every packet of pods outside the mesh. What they take
// (a captured flow's packets, steered to ztunnel) ends the chain with
// TC_ACT_OK, and what must be captured but cannot be is dropped: no later
// program may send an enrolled pod's connection anywhere but ztunnel. The
// agent attaches them first in the chain (TCX head), so that no program
// before them can pass such a connection on in plain text.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Flags of an enrolled pod.
#define POD_CAPTURED 1

// Ports of ztunnel's listeners.
#define PORT_OUTBOUND 15001
#define PORT_INBOUND_PLAIN 15006
#define PORT_HBONE 15008

// NEXT runs the next program on the hook: TCX_NEXT (Linux 6.6+, not in
// older UAPI headers) and, under clsact, TC_ACT_UNSPEC; both are -1.
#define NEXT TC_ACT_UNSPEC

// Mark set on redirected packets; the agent routes it to the local table.
// Must match redirect.Mark in Go.
#define REDIRECT_MARK 0x400

struct pod_info {
	__u32 flags;
};

// Enrolled pods on this node, by IPv4 address (network byte order).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_pods SEC(".maps");

// Counters, by the index constants below.
enum {
	STAT_OUTBOUND = 0,
	STAT_INBOUND_PLAIN,
	STAT_INBOUND_HBONE,
	STAT_DROP_NO_LISTENER,
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_stats SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&ambit_stats, &idx);
	if (v)
		*v += 1;
}

static __always_inline int captured(__u32 addr)
{
	struct pod_info *p = bpf_map_lookup_elem(&ambit_pods, &addr);
	return p && (p->flags & POD_CAPTURED);
}

// redirect steers one packet of a captured connection to ztunnel's
// listener on port.
static __always_inline int redirect(struct __sk_buff *skb, struct iphdr *ip, struct tcphdr *tcp, __u16 port, __u32 stat)
{
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = ip->saddr;
	t.ipv4.daddr = ip->daddr;
	t.ipv4.sport = tcp->source;
	t.ipv4.dport = tcp->dest;

	// A socket of this very flow: ztunnel's accepted (or half-open)
	// socket. The kernel finds it itself once the packet is local.
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		int own = sk->state != BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		if (own) {
			skb->mark |= REDIRECT_MARK;
			return TC_ACT_OK;
		}
	}
	if (!tcp->syn || tcp->ack)
		return NEXT; // a flow from before enrolment: not ours

	// ztunnel's listener: one bound to the destination address itself
	// (ztunnel may listen per workload address, transparently) or to the
	// wildcard address; failing that, one bound to loopback only.
	struct bpf_sock_tuple l = {};
	l.ipv4.daddr = ip->daddr;
	l.ipv4.dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(skb, &l, sizeof(l.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk && sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		sk = NULL;
	}
	if (!sk) {
		l.ipv4.daddr = bpf_htonl(0x7f000001);
		sk = bpf_skc_lookup_tcp(skb, &l, sizeof(l.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk) {
		count(STAT_DROP_NO_LISTENER);
		return TC_ACT_SHOT; // fail closed
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		count(STAT_DROP_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(STAT_DROP_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	skb->mark |= REDIRECT_MARK;
	count(stat);
	return TC_ACT_OK;
}

// parse finds the IPv4 and TCP headers of a packet, or returns 0.
static __always_inline int parse(struct __sk_buff *skb, struct iphdr **ipp, struct tcphdr **tcpp)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5 || ip->protocol != IPPROTO_TCP)
		return 0;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0; // not a first fragment: no TCP header
	struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
	if ((void *)(tcp + 1) > end)
		return 0;
	*ipp = ip;
	*tcpp = tcp;
	return 1;
}

static __always_inline int inbound(struct __sk_buff *skb, struct iphdr *ip, struct tcphdr *tcp)
{
	if (tcp->dest == bpf_htons(PORT_HBONE))
		return redirect(skb, ip, tcp, PORT_HBONE, STAT_INBOUND_HBONE);
	return redirect(skb, ip, tcp, PORT_INBOUND_PLAIN, STAT_INBOUND_PLAIN);
}

SEC("tc")
int ambit_from_pod(struct __sk_buff *skb)
{
	struct iphdr *ip;
	struct tcphdr *tcp;
	if (!parse(skb, &ip, &tcp))
		return NEXT;
	if (captured(ip->saddr))
		return redirect(skb, ip, tcp, PORT_OUTBOUND, STAT_OUTBOUND);
	if (captured(ip->daddr))
		return inbound(skb, ip, tcp);
	return NEXT;
}

SEC("tc")
int ambit_from_wire(struct __sk_buff *skb)
{
	struct iphdr *ip;
	struct tcphdr *tcp;
	if (!parse(skb, &ip, &tcp))
		return NEXT;
	if (captured(ip->daddr))
		return inbound(skb, ip, tcp);
	return NEXT;
}
