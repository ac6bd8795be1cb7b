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

// Mark set on redirected packets; the agent routes it to the local table
// and keeps it out of conntrack. Must match redirect.Mark in Go.
#define REDIRECT_MARK 0x400
// Marks of the pod path (what ztunnel sends on a pod's behalf re-enters
// the node through the pod's own veth). Must match redirect.go.
//   PATH_MARK      ztunnel's socket mark on connections it makes for a pod
//                  of this node: policy routing sends them to the path
//                  device, whose egress program re-enters them.
//   REENTER_MARK   on a packet between the path device and the pod's veth,
//                  where ambit_from_pod clears it and lets it pass.
//   REPLY_MARK     a reply to such a connection: delivered locally, like
//                  REDIRECT_MARK, but tracked, so that conntrack sees both
//                  directions of the connection it saw leave as the pod's.
#define PATH_MARK 0x800
#define REENTER_MARK 0x1000
#define REPLY_MARK 0x200

struct pod_info {
	__u32 flags;
};

// Where a pod's packets enter the node: the host end of its veth.
struct pod_link {
	__u32 ifindex;
	__u8 mac[ETH_ALEN];
	__u8 pad[2];
};

// Enrolled pods on this node, by IPv4 address (network byte order).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_pods SEC(".maps");

// The host end of each enrolled pod's veth, by IPv4 address.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct pod_link);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_pod_links SEC(".maps");

// The path device (index 0): where ambit_to_pod hands replies back to
// the node's stack.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pod_link);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ambit_path_dev SEC(".maps");

// Counters, by the index constants below.
enum {
	STAT_OUTBOUND = 0,
	STAT_INBOUND_PLAIN,
	STAT_INBOUND_HBONE,
	STAT_DROP_NO_LISTENER,
	STAT_POD_PATH,
	STAT_DROP_NO_POD_PATH,
	STAT_POD_PATH_REPLY,
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

// on_pod_path tells whether sk is a connection ztunnel made on a pod's
// behalf (its socket mark): one whose packets re-enter through the pod's
// veth.
static __always_inline int on_pod_path(struct bpf_sock *sk)
{
	struct bpf_sock *full = bpf_sk_fullsock(sk);
	return full && (full->mark & PATH_MARK);
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
		int path = own && on_pod_path(sk);
		bpf_sk_release(sk);
		if (path) {
			// A reply to a connection ztunnel made for a pod, which
			// left through the pod's path and was tracked there.
			skb->mark |= REPLY_MARK;
			return TC_ACT_OK;
		}
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
	if (skb->mark & REENTER_MARK) {
		// ztunnel's packet for this pod, re-entered by ambit_pod_path:
		// from here on it is the pod's own (no pod can set a mark: the
		// veth clears it as a packet leaves the pod's namespace).
		skb->mark = 0;
		return NEXT;
	}
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

// set_dst_mac makes the packet addressed to the interface it is about to
// enter, so that the stack takes it as its own (not another host's).
static __always_inline int set_dst_mac(struct __sk_buff *skb, const __u8 *mac)
{
	return bpf_skb_store_bytes(skb, __builtin_offsetof(struct ethhdr, h_dest), mac, ETH_ALEN, 0);
}

// ambit_pod_path, on the egress of the path device: every packet ztunnel
// sends on a pod's behalf (socket mark PATH_MARK, routed here by the
// agent's rule) enters the node again at the host end of that pod's veth,
// as if the pod had sent it, so that the primary CNI's programs, the
// node's routing and firewall (FORWARD) and NetworkPolicy treat it as the
// pod's traffic. A packet from an address that is not an enrolled pod of
// this node is dropped: the path device leads nowhere else.
SEC("tc")
int ambit_pod_path(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		goto drop;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end)
		goto drop;
	__u32 src = ip->saddr;
	struct pod_link *l = bpf_map_lookup_elem(&ambit_pod_links, &src);
	if (!l)
		goto drop;
	if (set_dst_mac(skb, l->mac))
		goto drop;
	skb->mark = (skb->mark & ~PATH_MARK) | REENTER_MARK;
	count(STAT_POD_PATH);
	return bpf_redirect(l->ifindex, BPF_F_INGRESS);
drop:
	count(STAT_DROP_NO_POD_PATH);
	return TC_ACT_SHOT;
}

// ambit_to_pod, on the egress of each pod's host veth: a reply to a
// connection ztunnel made on an enrolled pod's behalf that the stack is
// about to hand the pod (after conntrack undid NAT: masquerading or a
// Service's DNAT on the way out, so the wire program could not match it to
// ztunnel's socket) goes back into the node to ztunnel instead, through
// the path device, marked for local delivery and kept out of conntrack,
// which has seen it already. Everything else continues.
SEC("tc")
int ambit_to_pod(struct __sk_buff *skb)
{
	struct iphdr *ip;
	struct tcphdr *tcp;
	if (!parse(skb, &ip, &tcp))
		return NEXT;
	if (!captured(ip->daddr))
		return NEXT;
	struct bpf_sock_tuple t = {};
	t.ipv4.saddr = ip->saddr;
	t.ipv4.daddr = ip->daddr;
	t.ipv4.sport = tcp->source;
	t.ipv4.dport = tcp->dest;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return NEXT;
	int path = sk->state != BPF_TCP_LISTEN && on_pod_path(sk);
	bpf_sk_release(sk);
	if (!path)
		return NEXT;
	__u32 zero = 0;
	struct pod_link *dev = bpf_map_lookup_elem(&ambit_path_dev, &zero);
	if (!dev || !dev->ifindex)
		return TC_ACT_SHOT; // ztunnel's, yet no way back to it: never the pod's
	if (set_dst_mac(skb, dev->mac))
		return TC_ACT_SHOT;
	skb->mark = REDIRECT_MARK;
	count(STAT_POD_PATH_REPLY);
	return bpf_redirect(dev->ifindex, BPF_F_INGRESS);
}
