#!/usr/bin/env bash
# Builds the synwatch container image from the Dockerfile with podman, then checks in a
# network-namespace lab that the container, run the way compose.yaml runs it (host
# networking, every capability dropped but NET_RAW and NET_ADMIN, the image's non-root
# user, a read-only root file system with no tmpfs, a named volume for the state), bans a
# real scan:
#
#   victim namespace   10.78.0.1   python3 http.server on 8080, and the synwatch container
#                                  (podman run --network host, started in this namespace)
#   attacker namespace 10.78.0.2   nmap -sS -p 1-100 at the victim: must be banned
#                      10.78.0.3   an ordinary client (curl): must still get through
#                      10.78.0.4   the second round's scanner
#
# Each round waits for the agent's banner, scans, waits for the scan and block events,
# then asserts that the scanner is cut off and the client is not, that the victim's
# nftables set inet synwatch banned4 holds the scanner, that the health check of
# compose.yaml answers, and that `podman stop` makes the agent remove its table, print
# its summary and exit 0. Round 1 gives the capabilities as podman does (ambient, for a
# non-root user); round 2 as Docker and Kubernetes do (bounding set only: the image's
# file capabilities must do the rest), and must also restore round 1's ban from the
# state volume.
#
# No image registry is needed. The Debian bookworm base image (standing in for
# debian:bookworm-slim) is made with debootstrap from the Debian mirror apt is configured
# with; the Rust image (standing in for rust:1.95-slim-bookworm) is that base plus the
# Rust toolchain installed here: the default rustc when it is the version the Dockerfile
# names, else the rustup toolchain of that version (or RUST_TOOLCHAIN), plus this host's
# extra certificate authorities. Both are kept (the base tarball in IMAGE_TEST_CACHE, the
# images in podman's storage) and made again only when missing: `podman rmi
# localhost/synwatch-base:bookworm localhost/synwatch-rust:VERSION-bookworm` and removing
# the tarball start afresh. The build fetches crates from crates.io and packages from the
# Debian mirror (podman build --network host); cargo's registry and target directory are
# build cache mounts, so a rebuild after a change recompiles only synwatch's crates.
#
# usage: [IMAGE=localhost/synwatch:test] [RUST_TOOLCHAIN=1.95.0] \
#        [IMAGE_TEST_CACHE=/var/cache/synwatch-image-test] scripts/image-test.sh
# Needs root; installs what is missing (podman, netavark, crun or runc, debootstrap, nmap,
# curl, python3, iproute2, nftables) with apt-get. Lab traffic only ever goes between the
# two namespaces it creates; they, the containers and their volume are removed on every
# exit path. Prints how long each phase took.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lab-pair.sh"
cd "$(dirname "$0")/.."

image=${IMAGE:-localhost/synwatch:test}
toolchain=${RUST_TOOLCHAIN:-}
cache=${IMAGE_TEST_CACHE:-/var/cache/synwatch-image-test}
suite=bookworm
base_image=localhost/synwatch-base:$suite
base_tar=$cache/$suite-minbase.tar

say() { printf 'image-test: %s\n' "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }

# Phases and their durations, printed as each ends and together at exit.
start_ns=$(date +%s%N)
phase_name=""
phase_ns=$start_ns
timings=()
secs() { local ms=$((($2 - $1) / 1000000)); printf '%d.%d' $((ms / 1000)) $((ms % 1000 / 100)); }
phase() {
    local now
    now=$(date +%s%N)
    if [ -n "$phase_name" ]; then
        timings+=("$(printf '  %-46s %6ss' "$phase_name" "$(secs "$phase_ns" "$now")")")
        say "$phase_name: $(secs "$phase_ns" "$now")s"
    fi
    phase_name=${1:-}
    phase_ns=$now
    if [ -n "$phase_name" ]; then say "== $phase_name"; fi
}

[ "$(id -u)" -eq 0 ] || { say "needs root (podman, network namespaces, nftables)"; exit 2; }

# State the exit trap cleans up.
tag="swimg$$"
victim="${tag}v"
attacker="${tag}a"
vif="${tag}v0"
aif="${tag}a0"
container=""
containers=()
volume="$tag-state"
work=""
rootfs=""
lab_up=""
server_pid=""
pm=(podman)

# A failed debootstrap can leave /proc or /sys mounted in its target: unmount them, and
# never let rm cross into another file system.
release_rootfs() {
    awk -v root="$rootfs/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r mnt; do umount -l "$mnt"; done
    rm -rf --one-file-system "$rootfs"
    rootfs=""
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$lab_up" ]; then
        for c in "${containers[@]}"; do "${pm[@]}" rm -f -t 2 "$c" >/dev/null 2>&1; done
        "${pm[@]}" volume rm -f "$volume" >/dev/null 2>&1
    fi
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    ip netns del "$victim" 2>/dev/null
    ip netns del "$attacker" 2>/dev/null
    [ -n "$work" ] && rm -rf "$work"
    [ -n "$rootfs" ] && release_rootfs
    phase
    local end_ns
    end_ns=$(date +%s%N)
    if [ "${#timings[@]}" -gt 0 ]; then
        say "timings:"
        printf '%s\n' "${timings[@]}" >&2
        printf '  %-46s %6ss\n' "total" "$(secs "$start_ns" "$end_ns")" >&2
    fi
    if [ "$rc" -eq 0 ]; then say "PASSED"; else say "FAILED (exit $rc)"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

phase "install what is missing"
# command or file -> Debian package
need=(podman:podman /usr/lib/podman/netavark:netavark debootstrap:debootstrap nmap:nmap
      curl:curl python3:python3 ip:iproute2 nft:nftables nsenter:util-linux)
command -v crun >/dev/null 2>&1 || command -v runc >/dev/null 2>&1 || need+=(crun:crun)
apt_updated=""
install_packages() {
    say "installing Debian packages: $*"
    if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
missing=()
for pair in "${need[@]}"; do
    what=${pair%%:*}
    if [[ $what == /* ]]; then [ -e "$what" ] && continue; else command -v "$what" >/dev/null 2>&1 && continue; fi
    missing+=("${pair##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then install_packages "${missing[@]}"; fi
# The Rust the Dockerfile names (rust:1.95-slim-bookworm -> 1.95): the default rustc if it
# is that version, else a rustup toolchain of that name.
want=$(sed -n 's/^ARG RUST_IMAGE=.*rust:\([0-9][0-9.]*\)-.*/\1/p' Dockerfile)
[ -n "$want" ] || die "cannot read the Rust version from the Dockerfile's RUST_IMAGE"
sysroot=""
if [ -n "$toolchain" ]; then
    sysroot=$(rustup run "$toolchain" rustc --print sysroot) || die "no Rust toolchain $toolchain (RUST_TOOLCHAIN)"
else
    for t in "" "$want" "$want.0"; do
        if [ -z "$t" ]; then
            version=$(rustc --version 2>/dev/null | cut -d' ' -f2) || continue
            [[ $version == "$want" || $version == "$want".* ]] || continue
            sysroot=$(rustc --print sysroot) && break
        else
            sysroot=$(rustup run "$t" rustc --print sysroot 2>/dev/null) && break
        fi
    done
    [ -n "$sysroot" ] || die "no Rust $want here: install it with rustup (rustup toolchain install $want), or name a toolchain in RUST_TOOLCHAIN"
fi
sysroot=$(readlink -f "$sysroot")
rust_version=$("$sysroot/bin/rustc" --version | cut -d' ' -f2)
rust_image=localhost/synwatch-rust:$rust_version-$suite
say "podman $(podman version --format '{{.Client.Version}}' 2>/dev/null), Rust $rust_version from $sysroot"

phase "check podman"
# Storage: overlay where the kernel supports it here, else vfs (slower, always works).
if ! podman info >/dev/null 2>&1; then
    say "podman's default storage does not work here; using --storage-driver vfs"
    pm+=(--storage-driver vfs)
    "${pm[@]}" info >/dev/null || die "podman does not work on this machine (podman info)"
fi
# Podman gives containers RLIMIT_NOFILE and RLIMIT_NPROC of 1048576, which needs
# CAP_SYS_RESOURCE. Where root lacks it (some sandboxes and VMs), ask for what this
# process may have: its hard NOFILE limit, and at most the NPROC of 32768 that podman
# sets for itself.
limits=()
cap_eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
if (((16#$cap_eff >> 24 & 1) == 0)); then
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
    limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
    say "no CAP_SYS_RESOURCE here: containers get ${limits[*]}"
fi

phase "base image $base_image"
podman_has() { "${pm[@]}" image exists "$1"; }
debian_targets() {
    # shellcheck disable=SC2016 # apt's own $(FIELD) placeholders
    apt-get indextargets --no-release-info --format '$(TARGET_OF) $(REPO_URI) $(RELEASE)' \
        | awk -v suite="$suite" '$1 == "deb" && ($3 == suite || index($3, suite "-") == 1) { print $2, $3 }' \
        | sort -u
}
if podman_has "$base_image"; then
    say "$base_image is there"
else
    if [ ! -s "$base_tar" ]; then
        mirror=$(debian_targets | awk -v suite="$suite" '$2 == suite { print $1; exit }')
        [ -n "$mirror" ] || die "no Debian $suite mirror in apt's sources (apt-get indextargets); cannot debootstrap"
        say "debootstrap --variant=minbase $suite from $mirror"
        mkdir -p "$cache"
        rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
        include=()
        if [[ $mirror == https:* ]]; then include=(--include=ca-certificates); fi
        debootstrap --variant=minbase "${include[@]}" "$suite" "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed (log: $cache/debootstrap.log)"; }
        # The same sources as this host (release, updates, security), and the trimming
        # of the official slim images: no documentation, manual pages or translations,
        # no package lists or downloaded packages left behind.
        debian_targets | while read -r uri release; do echo "deb $uri $release main"; done \
            >"$rootfs/etc/apt/sources.list"
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
EOF
        cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
        rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
            "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
        tar --numeric-owner --xattrs --xattrs-include='*' -C "$rootfs" -cf "$base_tar.tmp" .
        mv "$base_tar.tmp" "$base_tar"
        release_rootfs
    fi
    say "importing $base_tar"
    "${pm[@]}" import --quiet --change 'CMD ["bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$base_tar" "$base_image" >/dev/null
fi

phase "container runtime"
# crun refuses a hybrid cgroup hierarchy with a controller on the v2 side; runc runs there.
probe() { "${pm[@]}" run --rm --network none "${limits[@]}" "$base_image" true 2>&1; }
if ! out=$(probe); then
    say "podman run fails with the default runtime: $out"
    command -v runc >/dev/null 2>&1 || install_packages runc
    pm+=(--runtime runc)
    out=$(probe) || die "podman cannot run a container here, with crun or runc: $out"
    say "using runc"
fi

phase "Rust image $rust_image"
if podman_has "$rust_image"; then
    say "$rust_image is there"
else
    # What rust:*-slim-bookworm has: the toolchain (here bin, lib and libexec of the host's
    # one, without its documentation), the C compiler for linking and for build scripts,
    # CARGO_HOME=/usr/local/cargo.
    # The certificate authorities this host adds to Debian's (a TLS-inspecting proxy's, as
    # here) come along, so that cargo in the build trusts what cargo here trusts.
    work=$(mktemp -d)
    mkdir "$work/ca"
    if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$work/ca/"
    fi
    cat >"$work/Containerfile" <<EOF
FROM $base_image
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
 && rm -rf /var/lib/apt/lists/*
RUN mkdir -p /usr/local/rust /usr/local/cargo \\
 && for d in bin lib libexec; do [ ! -d /mnt/toolchain/\$d ] || cp -a /mnt/toolchain/\$d /usr/local/rust/; done \\
 && /usr/local/rust/bin/rustc --version && /usr/local/rust/bin/cargo --version
ENV CARGO_HOME=/usr/local/cargo RUST_VERSION=$rust_version \\
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOF
    "${pm[@]}" build "${limits[@]}" --network host --volume "$sysroot:/mnt/toolchain:ro" \
        -t "$rust_image" -f "$work/Containerfile" "$work" >&2 \
        || die "cannot build $rust_image"
    rm -rf "$work"
    work=""
fi

phase "image $image (Dockerfile)"
old_id=$("${pm[@]}" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
"${pm[@]}" build "${limits[@]}" --network host \
    --build-arg "RUST_IMAGE=$rust_image" --build-arg "RUNTIME_IMAGE=$base_image" \
    -t "$image" . >&2 \
    || die "podman build of the Dockerfile failed"
new_id=$("${pm[@]}" image inspect --format '{{.Id}}' "$image")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    "${pm[@]}" rmi "$old_id" >/dev/null 2>&1 || say "note: the previous $image ($old_id) is still there"
fi
"${pm[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "$image" >&2 || true

phase "lab: namespaces, server"
lab_up=1
lab_pair "$victim" "$attacker" "$vif" "$aif" 10.78.0.1/24 10.78.0.2/24 10.78.0.3/24 10.78.0.4/24

work=$(mktemp -d)
echo "hello from the victim" >"$work/index.html"
ip netns exec "$victim" python3 -m http.server 8080 --bind 10.78.0.1 --directory "$work" >/dev/null 2>&1 &
server_pid=$!
fetch() { ip netns exec "$attacker" curl -sf --max-time "${2:-3}" --interface "$1" -o /dev/null http://10.78.0.1:8080/; }
for _ in $(seq 100); do fetch 10.78.0.3 1 && break; sleep 0.1; done
fetch 10.78.0.3 || die "the victim's HTTP server does not answer the client"
"${pm[@]}" volume create "$volume" >/dev/null

# podman in the victim namespace, whose network is then the container's "host" network:
# through nsenter --net (the network namespace only; `ip netns exec` would also give
# podman a private mount namespace, hiding the container's mounts from later podman
# commands). podman treats a host-network container as having no network namespace of
# its own, so `podman exec` must run there too.
in_victim() { nsenter --net="/run/netns/$victim" "${pm[@]}" "$@"; }
logs() { "${pm[@]}" logs "$container" 2>&1; }
events() { "${pm[@]}" logs "$container" 2>/dev/null; }
# (grep -q on a variable, not on a pipe: grep stopping early would fail podman logs with
# SIGPIPE, and pipefail the test.)
logs_have() { grep -qE -- "$1" <<<"$(logs)"; }
events_have() { grep -qE -- "$1" <<<"$(events)"; }
running() { [ "$("${pm[@]}" inspect --format '{{.State.Running}}' "$container" 2>/dev/null)" = true ]; }

# start_agent NAME [podman run options] -- [words before synwatch's own arguments]
# Runs the image as compose.yaml does: host network, every capability dropped but
# NET_RAW and NET_ADMIN, read-only root file system with no tmpfs anywhere (as Docker's
# --read-only; podman's would add some), the state in a named volume.
start_agent() {
    container=$1
    shift
    local opts=()
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    containers+=("$container")
    in_victim run -d --name "$container" "${limits[@]}" \
        --network host --cap-drop ALL --cap-add NET_RAW --cap-add NET_ADMIN \
        --read-only --read-only-tmpfs=false -v "$volume:/var/lib/synwatch" "${opts[@]}" \
        "$image" "$@" run --iface "$vif" --format json --block nftables --ban 10m >/dev/null \
        || die "podman run failed"
    for _ in $(seq 300); do
        logs_have watching && break
        running || break
        sleep 0.1
    done
    logs_have watching || { logs >&2; die "the agent in the container did not start"; }
    logs | grep -v '^{' | sed 's/^/  | /' >&2
    local who
    who=$("${pm[@]}" top "$container" user capeff | tail -n +2)
    say "agent process (user, effective capabilities): $(tr -s ' ' <<<"$who")"
    [[ $who == synwatch* ]] || die "the agent does not run as the image's synwatch user"
}

# scan_and_check SCANNER: nmap from SCANNER, then it must be banned and only it.
scan_and_check() {
    local scanner=$1 re=${1//./\\.}
    fetch "$scanner" || die "$scanner cannot reach the server before its scan"
    ip netns exec "$attacker" nmap -n -Pn -sS -p 1-100 -e "$aif" -S "$scanner" 10.78.0.1 >/dev/null
    for _ in $(seq 100); do
        events_have "\"event\":\"block\",\"src\":\"$re\"" && break
        sleep 0.1
    done
    events | grep -E "\"event\":\"(scan|block)\",\"src\":\"$re\"" | sed 's/^/  | /' >&2 || true
    events_have "\"event\":\"scan\",\"kind\":\"ports\",\"src\":\"$re\"" || { logs >&2; die "no scan event for $scanner"; }
    events_have "\"event\":\"block\",\"src\":\"$re\"" || { logs >&2; die "no block event for $scanner"; }
    if fetch "$scanner"; then die "the scanner $scanner still reaches 10.78.0.1:8080"; fi
    say "ok: the scanner $scanner is cut off"
    fetch 10.78.0.3 || die "the client 10.78.0.3 no longer reaches 10.78.0.1:8080"
    say "ok: the client 10.78.0.3 still gets through"
    check_banned "$scanner"
    # The health check of compose.yaml, with what the image has (bash; no HTTP client).
    local health='exec 3<>/dev/tcp/127.0.0.1/9809 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && head -n 1 <&3 | grep -q " 200 "'
    in_victim exec "$container" bash -c "$health" || die "the health check (GET /healthz) fails"
    say "ok: /healthz answers 200 inside the container"
}

check_banned() {
    local ruleset
    ruleset=$(ip netns exec "$victim" nft list ruleset)
    grep -q '^table inet synwatch' <<<"$ruleset" || { echo "$ruleset" >&2; die "no synwatch table in the victim's ruleset"; }
    grep -qw "${1//./\\.}" <<<"$(ip netns exec "$victim" nft list set inet synwatch banned4)" \
        || { echo "$ruleset" >&2; die "$1 is not in the synwatch set"; }
    say "ok: the victim's nftables set inet synwatch banned4 holds $1"
}

stop_agent() {
    "${pm[@]}" stop -t 20 "$container" >/dev/null
    local rc
    rc=$("${pm[@]}" inspect --format '{{.State.ExitCode}}' "$container")
    logs | grep -v '^{' | sed -n '/synwatch: stopped\./,$p' | sed 's/^/  | /' >&2
    [ "$rc" = 0 ] || { logs >&2; die "the agent exited with $rc on podman stop"; }
    logs_have '^synwatch: stopped\.' || die "no summary (synwatch: stopped.) in the container's log"
    if grep -q 'inet synwatch' <<<"$(ip netns exec "$victim" nft list tables)"; then
        die "the synwatch table is still in the victim's ruleset after the agent stopped"
    fi
    say "ok: exit code 0, summary printed, table removed"
}

phase "lab 1: as podman runs it"
# podman makes the added capabilities ambient for a non-root user: the agent and nft get
# them without the image's file capabilities.
start_agent "$tag-podman" --
scan_and_check 10.78.0.2
stop_agent

phase "lab 2: as Docker runs it"
# Docker (and Kubernetes) put the added capabilities in the bounding set only: a non-root
# process starts with none, and gets some only by executing a file that carries them.
# setpriv recreates that start as the image's user (it needs SETUID, SETGID and SETPCAP,
# and gives them up: bounding set NET_RAW and NET_ADMIN, nothing permitted, inheritable
# or ambient once sh is executed), so only the image's file capabilities can make this
# agent work. Its start also restores the first agent's ban from the state volume.
# shellcheck disable=SC2016 # "$0" "$@" are for the container's sh
start_agent "$tag-docker" --user 0 --cap-add SETUID --cap-add SETGID --cap-add SETPCAP \
    --entrypoint setpriv -- --reuid=9809 --regid=9809 --clear-groups --inh-caps=-all \
    --ambient-caps=-all --bounding-set=-all,+net_raw,+net_admin \
    /bin/sh -c 'exec "$0" "$@"' /usr/local/bin/synwatch
logs_have '1 ban restored' || die "the first agent's ban was not restored from the state volume"
if fetch 10.78.0.2; then die "the restored ban does not stop 10.78.0.2"; fi
check_banned 10.78.0.2
say "ok: the ban of 10.78.0.2 was restored from the state volume"
scan_and_check 10.78.0.4
stop_agent
