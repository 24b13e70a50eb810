# synwatch container image: a build stage with the Rust toolchain, and a small Debian
# runtime with libpcap and the firewall programs synwatch runs (nft; iptables and ipset
# for --block iptables).
#
#   docker build -t synwatch .            (or: podman build -t synwatch .)
#   docker run -d --name synwatch --network host \
#       --cap-drop ALL --cap-add NET_RAW --cap-add NET_ADMIN \
#       -v synwatch-state:/var/lib/synwatch synwatch run --iface eth0
#
# Host networking is what makes it useful: the agent must see the host's interfaces and
# put its nftables table in the host's network namespace. compose.yaml has the same as a
# service. scripts/image-test.sh (make image-test) builds this file with podman and checks
# in a network-namespace lab that the container bans a real nmap scan.
#
# RUST_IMAGE and RUNTIME_IMAGE can point at local or mirrored images of the same Debian
# release (the test script builds both from debootstrap when no registry is reachable).
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpcap-dev pkg-config libcap2-bin clang libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cargo registry and target/ are cache mounts (BuildKit, i.e. any current Docker, and
# buildah/podman): a rebuild after a source change recompiles synwatch's crates only.
# The binary keeps its symbols (for backtraces) but not the debug info of
# `[profile.release] debug = 1`.
RUN --mount=type=cache,id=synwatch-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=synwatch-target,target=/src/target \
    # COPY does not keep the sources' modification times everywhere, and cargo decides
    # what to rebuild by them: touch the workspace's own sources so the cached target/
    # can never hold a stale build of them.
    find crates bpf -type f -exec touch {} + \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/synwatch /out/synwatch \
 && strip --strip-debug /out/synwatch \
 && setcap cap_net_raw,cap_net_admin+ep /out/synwatch

FROM ${RUNTIME_IMAGE}
# libcap2-bin (setcap, getcap, capsh; 100 kB) stays for inspecting the capabilities;
# ca-certificates gives the system roots an https:// CrowdSec LAPI is checked against.
# iproute2's ip lists every next hop of the default routes (ECMP, policy tables, nexthop
# groups), which /proc does not show: they are protected like the first.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpcap0.8 nftables iptables ipset iproute2 libcap2-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
# Runs as the unprivileged user synwatch (UID/GID 9809, fixed so that a bind-mounted state
# directory can be given to it: chown 9809:9809 DIR), with file capabilities on the
# binary: CAP_NET_RAW (libpcap) and CAP_NET_ADMIN (the firewall). Docker (and Kubernetes,
# usually) put --cap-add capabilities only in the bounding set of a non-root process, so
# they take effect when a program carrying them is executed; synwatch then hands them on,
# as ambient capabilities, to the nft, iptables and ipset it runs. The price (checked
# with podman; scripts/image-test.sh runs the agent both the podman and the Docker way):
#   - every container of this image needs both NET_RAW and NET_ADMIN, whatever the
#     command (--help and replay too) and the user (root too): the kernel refuses to
#     execute a program whose file capabilities the bounding set cannot grant, with
#     "exec /usr/local/bin/synwatch: operation not permitted";
#   - no-new-privileges (Docker's --security-opt, Kubernetes' allowPrivilegeEscalation:
#     false) makes the kernel ignore file capabilities: under Docker the agent then cannot
#     capture (it says so and exits 2). Leave it off, or run as --user 0 with the same
#     two capabilities.
RUN groupadd --gid 9809 synwatch \
 && useradd --uid 9809 --gid synwatch --home-dir /var/lib/synwatch \
        --no-create-home --shell /usr/sbin/nologin synwatch \
 && install -d -m 0700 -o synwatch -g synwatch /var/lib/synwatch
# The capabilities are set in the build stage and kept by COPY (buildah keeps extended
# attributes, checked; so does BuildKit's copy); a builder that dropped them gets them set
# here, at the cost of a second copy of the binary in that layer.
COPY --from=build /out/synwatch /usr/local/bin/synwatch
RUN getcap /usr/local/bin/synwatch | grep -q 'cap_net_admin,cap_net_raw=ep' \
 || setcap cap_net_raw,cap_net_admin+ep /usr/local/bin/synwatch

LABEL org.opencontainers.image.title="synwatch" \
      org.opencontainers.image.description="See every new TCP connection attempt, detect port scans, block scanners (run with --network host, --cap-add NET_RAW --cap-add NET_ADMIN)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/synwatch"

USER 9809:9809
# Bans survive restarts here; it also holds the control socket of `synwatch blocks`
# (docker exec synwatch synwatch blocks list).
VOLUME /var/lib/synwatch
# Metrics stay on the default 127.0.0.1:9809: with host networking that is the host's
# loopback, reachable from the host and nowhere else. SIGTERM (docker stop) makes the
# agent remove its rules, print its summary and exit 0.
ENTRYPOINT ["/usr/local/bin/synwatch"]
CMD ["run"]
