# Network helpers shared by the boot script and the udhcpc event script.

# mask2prefix 255.255.255.0 -> 24 (a plain number is returned as is)
mask2prefix() {
	case "$1" in
	*.*) ;;
	*) echo "$1"; return ;;
	esac
	local n=0 o
	local IFS=.
	for o in $1; do
		case "$o" in
		255) n=$((n + 8)) ;; 254) n=$((n + 7)) ;; 252) n=$((n + 6)) ;;
		248) n=$((n + 5)) ;; 240) n=$((n + 4)) ;; 224) n=$((n + 3)) ;;
		192) n=$((n + 2)) ;; 128) n=$((n + 1)) ;;
		esac
	done
	echo "$n"
}

# add_route DEST GW IFACE: DEST is a CIDR, "default" or 0.0.0.0/0; a GW of
# 0.0.0.0 or "" means on-link. Gateways outside the interface's subnet work too.
add_route() {
	local dst="$1" gw="$2" dev="$3"
	case "$dst" in 0.0.0.0/0|0.0.0.0) dst=default ;; esac
	if [ -z "$gw" ] || [ "$gw" = 0.0.0.0 ]; then
		ip route replace "$dst" dev "$dev"
		return
	fi
	ip route replace "$dst" via "$gw" dev "$dev" onlink 2>/dev/null && return 0
	ip route replace "$gw" dev "$dev" 2>/dev/null
	ip route replace "$dst" via "$gw" dev "$dev"
}

# write_resolv_conf "DNS SERVERS" "SEARCH DOMAINS": merges into /etc/resolv.conf, with the
# options line of /etc/resolv.conf.options (cloud-init's resolv_conf) when there is one
write_resolv_conf() {
	local ns="$1" search="$2" old_ns="" old_search="" x out=""
	[ -z "$ns$search" ] && [ ! -f /etc/resolv.conf.options ] && return 0
	if [ -f /etc/resolv.conf ]; then
		old_ns=$(awk '$1 == "nameserver" { print $2 }' /etc/resolv.conf)
		old_search=$(awk '$1 == "search" || $1 == "domain" { $1 = ""; print }' /etc/resolv.conf)
	fi
	local all_search="" all_ns=""
	for x in $old_search $search; do
		case " $all_search " in *" $x "*) ;; *) all_search="$all_search $x" ;; esac
	done
	for x in $old_ns $ns; do
		case " $all_ns " in *" $x "*) ;; *) all_ns="$all_ns $x" ;; esac
	done
	[ -n "$all_search" ] && out="search${all_search}
"
	for x in $all_ns; do
		out="${out}nameserver $x
"
	done
	[ -f /etc/resolv.conf.options ] && out="${out}$(cat /etc/resolv.conf.options)
"
	printf '%s' "$out" >/etc/resolv.conf.new && mv /etc/resolv.conf.new /etc/resolv.conf
}

# first global IPv4 address, or "none"
first_ipv4() {
	local a
	a=$(ip -4 -o addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')
	echo "${a:-none}"
}
