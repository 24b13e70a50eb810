// SPDX-License-Identifier: GPL-2.0
/*
 * The load generator of scripts/bench-xdp.sh (not part of the agent): run through
 * BPF_PROG_TEST_RUN with live frames on the attacker's veth end, it sends the one TCP
 * SYN it is given again and again (XDP_TX), each time from a new source port (checksum
 * updated), so the victim sees many flows at millions of packets a second. The kernel
 * has no pktgen here and a raw-socket sender tops out far below what XDP drops.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} next_port SEC(".maps");

SEC("xdp")
int flood(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *tcp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	if ((void *)(tcp + 1) > data_end)
		return XDP_ABORTED;
	__u32 key = 0;
	__u32 *n = bpf_map_lookup_elem(&next_port, &key);
	if (!n)
		return XDP_ABORTED;
	__u16 port = 1024 + (*n)++ % 60000;
	__u32 sum = (~bpf_ntohs(tcp->check)) & 0xffff;
	sum += (~bpf_ntohs(tcp->source)) & 0xffff;
	sum += port;
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	tcp->check = bpf_htons(~sum & 0xffff);
	tcp->source = bpf_htons(port);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
