# Sourced by the lab scripts (bench-*.sh, lab-capture.sh, image-test.sh): the network
# namespace pair they all start from.
#
# lab_pair VICTIM ATTACKER VIF AIF "VICTIM_ADDR..." ATTACKER_ADDR...: two new namespaces
# joined by a veth pair (VIF in VICTIM, AIF in ATTACKER), each address given as
# ADDR/PREFIX (IPv6 ones without duplicate address detection, so they work at once),
# loopback and both ends up. The victim's addresses come as one space-separated word.
lab_pair() {
    local victim=$1 attacker=$2 vif=$3 aif=$4 victim_addrs=$5 addr
    shift 5
    ip netns add "$victim"
    ip netns add "$attacker"
    ip link add "$vif" netns "$victim" type veth peer name "$aif" netns "$attacker"
    for addr in $victim_addrs; do lab_addr "$victim" "$vif" "$addr"; done
    for addr in "$@"; do lab_addr "$attacker" "$aif" "$addr"; done
    for ns in "$victim" "$attacker"; do ip -n "$ns" link set lo up; done
    ip -n "$victim" link set "$vif" up
    ip -n "$attacker" link set "$aif" up
}

# lab_addr NS DEV ADDR/PREFIX
lab_addr() {
    case $3 in
        *:*) ip -n "$1" addr add "$3" dev "$2" nodad ;;
        *) ip -n "$1" addr add "$3" dev "$2" ;;
    esac
}
