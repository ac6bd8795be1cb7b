#!/usr/bin/env bash
# Installs the Debian packages the lab and code generation need (clang and
# libbpf for the eBPF programs), idempotently: nothing is
# downloaded when they are all there already. With arguments, installs
# those packages instead (make bench-waypoint: haproxy, nginx).
set -euo pipefail
pkgs=(etcd-server containernetworking-plugins iproute2 iptables ipset conntrack tcpdump ca-certificates clang llvm libbpf-dev linux-libc-dev stunnel4 protobuf-compiler libprotobuf-dev containerd runc)
if (($#)); then
	pkgs=("$@")
fi
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "missing packages ${missing[*]}: run as root to install them" >&2
		exit 1
	fi
	echo "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
