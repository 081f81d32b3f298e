# cloud-init subset for the virtlet tiny test image (busybox ash).
# Sourced by /etc/init.d/rcS. Data sources: NoCloud (label cidata/CIDATA,
# ISO9660 or FAT) and ConfigDrive (label config-2).

. /usr/libexec/virtlet/netlib.sh

Y2F=/usr/libexec/virtlet/yaml2flat.awk
CI_DIR=/run/virtlet
DS_MNT=$CI_DIR/ds
DS_TYPE=none
MD=$CI_DIR/meta-data.flat
UDF=$CI_DIR/user-data.flat
NET=$CI_DIR/network.flat
CI_HOSTNAME=
CI_KEYS=$CI_DIR/keys

log() {
	local up
	read -r up _ </proc/uptime
	echo "virtlet-init: [$up] $*"
}

# ---- flattened YAML/JSON access (see yaml2flat.awk) ----
flatten() { awk -f "$Y2F" "$1" >"$2" 2>/dev/null || : >"$2"; }
# ytype FILE PATH -> s|l|m|n or nothing
ytype() { awk -F'\t' -v p="$2" '$1 == p && $2 != "k" { print $2; exit }' "$1"; }
# yget FILE PATH -> scalar value (exact, incl. newlines); fails if absent
yget() {
	local v
	v=$(awk -F'\t' -v p="$2" '$1 == p && $2 == "s" { print $3; f = 1; exit } END { exit !f }' "$1") || return 1
	printf '%b' "$v"
}
# ylen FILE PATH -> number of list items (0 if not a list)
ylen() { awk -F'\t' -v p="$2" '$1 == p && $2 == "l" { n = $3 } END { print n + 0 }' "$1"; }
# ykeys FILE PATH -> map keys, one a line
ykeys() { awk -F'\t' -v p="$2" '$1 == p && $2 == "k" { print $3 }' "$1"; }
# yvalues FILE PATH -> a scalar, or each scalar item of a list / value of a
# map, one a line
yvalues() {
	local t i n k
	t=$(ytype "$1" "$2")
	case "$t" in
	s) yget "$1" "$2"; echo ;;
	l)
		n=$(ylen "$1" "$2"); i=0
		while [ "$i" -lt "$n" ]; do
			[ "$(ytype "$1" "$2.$i")" = s ] && { yget "$1" "$2.$i"; echo; }
			i=$((i + 1))
		done ;;
	m)
		ykeys "$1" "$2" | while IFS= read -r k; do
			[ "$(ytype "$1" "$2.$k")" = s ] && { yget "$1" "$2.$k"; echo; }
		done ;;
	esac
}
yis_true() {
	case "$(yget "$1" "$2" 2>/dev/null)" in true|True|TRUE|yes|Yes|on|1) return 0 ;; esac
	return 1
}
shquote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# ---- data source ----
find_datasource() {
	local wait="${1:-10}" i=0 l dev
	while :; do
		for l in cidata CIDATA config-2 CONFIG-2; do
			dev=$(findfs "LABEL=$l" 2>/dev/null) || continue
			[ -b "$dev" ] || continue
			echo "$l $dev"
			return 0
		done
		[ "$i" -ge $((wait * 10)) ] && return 1
		sleep 0.1
		i=$((i + 1))
	done
}

mount_datasource() {
	local found label dev t
	found=$(find_datasource "$1") || { log "no cloud-init data source found"; return 1; }
	label=${found%% *}
	dev=${found#* }
	mkdir -p "$DS_MNT"
	for t in iso9660 vfat; do
		mount -t "$t" -o ro "$dev" "$DS_MNT" 2>/dev/null && break
	done
	mountpoint -q "$DS_MNT" || { log "cannot mount $dev"; return 1; }
	case "$label" in
	config-2|CONFIG-2) DS_TYPE=configdrive ;;
	*) DS_TYPE=nocloud ;;
	esac
	log "data source $DS_TYPE on $dev ($t)"
}

# ---- meta-data ----
read_metadata() {
	: >"$CI_KEYS"
	: >"$MD"
	case "$DS_TYPE" in
	nocloud)
		[ -f "$DS_MNT/meta-data" ] && flatten "$DS_MNT/meta-data" "$MD"
		CI_HOSTNAME=$(yget "$MD" local-hostname 2>/dev/null || yget "$MD" hostname 2>/dev/null)
		yvalues "$MD" public-keys >>"$CI_KEYS"
		yvalues "$MD" public_keys >>"$CI_KEYS"
		;;
	configdrive)
		[ -f "$DS_MNT/openstack/latest/meta_data.json" ] && flatten "$DS_MNT/openstack/latest/meta_data.json" "$MD"
		CI_HOSTNAME=$(yget "$MD" hostname 2>/dev/null || yget "$MD" name 2>/dev/null)
		yvalues "$MD" public_keys >>"$CI_KEYS"
		;;
	esac
	if [ "$DS_TYPE" != none ]; then
		local iid
		iid=$(yget "$MD" instance-id 2>/dev/null || yget "$MD" uuid 2>/dev/null)
		log "instance-id=${iid:-?} hostname=${CI_HOSTNAME:-?}"
	fi
}

set_hostname() {
	local fqdn="$1" short
	[ -n "$fqdn" ] || return 0
	short=${fqdn%%.*}
	hostname "$short"
	echo "$short" >/etc/hostname
	grep -v '^127\.0\.1\.1' /etc/hosts >/etc/hosts.new
	if [ "$fqdn" != "$short" ]; then
		echo "127.0.1.1 $fqdn $short" >>/etc/hosts.new
	else
		echo "127.0.1.1 $short" >>/etc/hosts.new
	fi
	mv /etc/hosts.new /etc/hosts
}

install_ssh_keys() {
	mkdir -p /root/.ssh
	chmod 700 /root /root/.ssh
	touch /root/.ssh/authorized_keys
	grep -v '^[[:space:]]*$' "$CI_KEYS" | while IFS= read -r k; do
		grep -qxF "$k" /root/.ssh/authorized_keys || echo "$k" >>/root/.ssh/authorized_keys
	done
	chmod 600 /root/.ssh/authorized_keys
}

# ---- network ----
ether_ifaces() {
	local d
	for d in /sys/class/net/*; do
		[ "$(cat "$d/type" 2>/dev/null)" = 1 ] || continue
		[ -e "$d/device" ] || continue
		echo "${d##*/}"
	done
}
# find_iface MAC NAME -> interface name
find_iface() {
	local mac="$1" name="$2" i
	if [ -n "$mac" ]; then
		mac=$(echo "$mac" | tr 'A-F' 'a-f')
		for i in $(ether_ifaces); do
			[ "$(cat "/sys/class/net/$i/address")" = "$mac" ] && { echo "$i"; return 0; }
		done
		return 1
	fi
	[ -n "$name" ] && [ -e "/sys/class/net/$name" ] && { echo "$name"; return 0; }
	return 1
}
# renames a matched interface to the configured name (as cloud-init does)
rename_iface() {
	local cur="$1" want="$2"
	[ -n "$want" ] && [ "$cur" != "$want" ] || { echo "$cur"; return; }
	[ -e "/sys/class/net/$want" ] && { echo "$cur"; return; }
	ip link set dev "$cur" down 2>/dev/null
	if ip link set dev "$cur" name "$want" 2>/dev/null; then echo "$want"; else echo "$cur"; fi
}

DHCP_IFACES=
CONFIGURED_IFACES=

configure_static() {
	# configure_static IFACE ADDRESS NETMASK|PREFIX GATEWAY
	local dev="$1" addr="$2" mask="$3" gw="$4"
	case "$addr" in
	*:*) ip -6 addr add "$addr" dev "$dev" ;;   # IPv6 given in CIDR form
	*/*) ip addr add "$addr" dev "$dev" ;;
	*) ip addr add "$addr/$(mask2prefix "${mask:-32}")" dev "$dev" ;;
	esac
	[ -n "$gw" ] && add_route default "$gw" "$dev"
	log "static $addr${mask:+/$mask} on $dev${gw:+ via $gw}"
}

# route entry at PATH of file F: {network|destination, netmask|prefix, gateway}
route_from() {
	local f="$1" p="$2" dev="$3" net mask gw
	net=$(yget "$f" "$p.network" 2>/dev/null || yget "$f" "$p.destination" 2>/dev/null)
	mask=$(yget "$f" "$p.netmask" 2>/dev/null || yget "$f" "$p.prefix" 2>/dev/null)
	gw=$(yget "$f" "$p.gateway" 2>/dev/null)
	[ -n "$net" ] || return 0
	case "$net" in */*) ;; *) net="$net/$(mask2prefix "${mask:-32}")" ;; esac
	add_route "$net" "$gw" "$dev"
}

# NoCloud network-config version 1
apply_network_v1() {
	local f="$1" pre="$2" n i t dev mac name mtu ns nsub j st addr
	n=$(ylen "$f" "${pre}config")
	i=0
	while [ "$i" -lt "$n" ]; do
		local c="${pre}config.$i"
		t=$(yget "$f" "$c.type" 2>/dev/null)
		case "$t" in
		physical)
			mac=$(yget "$f" "$c.mac_address" 2>/dev/null)
			name=$(yget "$f" "$c.name" 2>/dev/null)
			if ! dev=$(find_iface "$mac" "$name"); then
				log "network-config: no interface for ${mac:-$name}"
				i=$((i + 1)); continue
			fi
			dev=$(rename_iface "$dev" "$name")
			mtu=$(yget "$f" "$c.mtu" 2>/dev/null) && ip link set dev "$dev" mtu "$mtu"
			ip link set dev "$dev" up
			CONFIGURED_IFACES="$CONFIGURED_IFACES $dev"
			nsub=$(ylen "$f" "$c.subnets")
			j=0
			while [ "$j" -lt "$nsub" ]; do
				local s="$c.subnets.$j"
				st=$(yget "$f" "$s.type" 2>/dev/null)
				case "$st" in
				static|static4|static6)
					addr=$(yget "$f" "$s.address" 2>/dev/null)
					[ -n "$addr" ] && configure_static "$dev" "$addr" \
						"$(yget "$f" "$s.netmask" 2>/dev/null || yget "$f" "$s.prefix" 2>/dev/null)" \
						"$(yget "$f" "$s.gateway" 2>/dev/null)"
					local k=0 nr
					nr=$(ylen "$f" "$s.routes")
					while [ "$k" -lt "$nr" ]; do route_from "$f" "$s.routes.$k" "$dev"; k=$((k + 1)); done
					write_resolv_conf "$(yvalues "$f" "$s.dns_nameservers")" "$(yvalues "$f" "$s.dns_search")"
					;;
				dhcp|dhcp4) DHCP_IFACES="$DHCP_IFACES $dev" ;;
				*) log "network-config: subnet type '$st' not supported on $dev" ;;
				esac
				j=$((j + 1))
			done
			;;
		nameserver)
			write_resolv_conf "$(yvalues "$f" "$c.address")" "$(yvalues "$f" "$c.search")"
			;;
		route)
			local rdev
			rdev=$(ip -4 route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
			[ -n "$rdev" ] || rdev=$(echo $CONFIGURED_IFACES | awk '{ print $1 }')
			[ -n "$rdev" ] && route_from "$f" "$c" "$rdev"
			;;
		*) log "network-config: entry type '$t' not supported" ;;
		esac
		i=$((i + 1))
	done
}

# ConfigDrive network_data.json (links / networks / services)
apply_network_configdrive() {
	local f="$1" n i j id mac dev mtu t nl link addr
	nl=$(ylen "$f" links)
	n=$(ylen "$f" networks)
	i=0
	while [ "$i" -lt "$n" ]; do
		local c="networks.$i"
		link=$(yget "$f" "$c.link" 2>/dev/null)
		t=$(yget "$f" "$c.type" 2>/dev/null)
		dev= mac= mtu=
		j=0
		while [ "$j" -lt "$nl" ]; do
			id=$(yget "$f" "links.$j.id" 2>/dev/null)
			if [ "$id" = "$link" ]; then
				mac=$(yget "$f" "links.$j.ethernet_mac_address" 2>/dev/null)
				mtu=$(yget "$f" "links.$j.mtu" 2>/dev/null)
				dev=$(find_iface "$mac" "$id") || dev=
				break
			fi
			j=$((j + 1))
		done
		if [ -z "$dev" ]; then
			log "network_data: no interface for link ${link:-?}"
			i=$((i + 1)); continue
		fi
		[ -n "$mtu" ] && ip link set dev "$dev" mtu "$mtu"
		ip link set dev "$dev" up
		CONFIGURED_IFACES="$CONFIGURED_IFACES $dev"
		case "$t" in
		ipv4|ipv6)
			addr=$(yget "$f" "$c.ip_address" 2>/dev/null)
			[ -n "$addr" ] && configure_static "$dev" "$addr" "$(yget "$f" "$c.netmask" 2>/dev/null)" "$(yget "$f" "$c.gateway" 2>/dev/null)"
			local k=0 nr
			nr=$(ylen "$f" "$c.routes")
			while [ "$k" -lt "$nr" ]; do route_from "$f" "$c.routes.$k" "$dev"; k=$((k + 1)); done
			;;
		ipv4_dhcp|dhcp4|dhcp) DHCP_IFACES="$DHCP_IFACES $dev" ;;
		*) log "network_data: network type '$t' not supported" ;;
		esac
		i=$((i + 1))
	done
	n=$(ylen "$f" services)
	i=0
	while [ "$i" -lt "$n" ]; do
		case "$(yget "$f" "services.$i.type" 2>/dev/null)" in
		dns|nameserver)
			write_resolv_conf "$(yvalues "$f" "services.$i.address")" "$(yvalues "$f" "services.$i.search")" ;;
		esac
		i=$((i + 1))
	done
}

run_dhcp() {
	local i
	for i in "$@"; do
		ip link set dev "$i" up
		udhcpc -i "$i" -s /usr/share/udhcpc/default.script -b -t 10 -T 1 -A 3 \
			-O staticroutes -O search -O mtu -x "hostname:$(hostname)" \
			-p "/run/udhcpc.$i.pid" >"/var/log/udhcpc.$i.log" 2>&1 &
	done
	wait
}

configure_network() {
	ip link set dev lo up
	local nc="" fmt=""
	case "$DS_TYPE" in
	nocloud) [ -f "$DS_MNT/network-config" ] && nc="$DS_MNT/network-config" ;;
	configdrive) [ -f "$DS_MNT/openstack/latest/network_data.json" ] && nc="$DS_MNT/openstack/latest/network_data.json" ;;
	esac
	if [ -n "$nc" ]; then
		flatten "$nc" "$NET"
		if [ "$DS_TYPE" = configdrive ]; then
			apply_network_configdrive "$NET"
		elif [ "$(ytype "$NET" network)" = m ]; then
			fmt=$(yget "$NET" network.version 2>/dev/null)
			[ "$fmt" = 1 ] && apply_network_v1 "$NET" network.
		else
			fmt=$(yget "$NET" version 2>/dev/null)
			[ "$fmt" = 1 ] && apply_network_v1 "$NET" ""
		fi
		[ -n "$fmt" ] && [ "$fmt" != 1 ] && log "network-config version $fmt not supported, using DHCP"
	fi
	if [ -z "$CONFIGURED_IFACES" ]; then
		DHCP_IFACES=$(ether_ifaces)
		[ -n "$DHCP_IFACES" ] && log "DHCP on" $DHCP_IFACES
	fi
	# shellcheck disable=SC2086
	[ -n "$DHCP_IFACES" ] && run_dhcp $DHCP_IFACES
	return 0
}

# ---- user-data ----
user_data_file() {
	case "$DS_TYPE" in
	nocloud) echo "$DS_MNT/user-data" ;;
	configdrive) echo "$DS_MNT/openstack/latest/user_data" ;;
	esac
}

# KEY=value lines of /etc/cloud/environment become exported variables
load_cloud_env() {
	[ -r /etc/cloud/environment ] || return 0
	local l
	while IFS= read -r l || [ -n "$l" ]; do
		case "$l" in ''|'#'*) continue ;; *=*) export "$l" ;; esac
	done </etc/cloud/environment
}

decode_content() {
	case "$1" in
	b64|base64) base64 -d ;;
	gz|gzip) gunzip -c ;;
	gz+b64|gzip+base64|gz+base64|gzip+b64) base64 -d | gunzip -c ;;
	*) cat ;;
	esac
}

write_files() {
	local f="$1" n i p path enc perm owner
	n=$(ylen "$f" write_files)
	i=0
	while [ "$i" -lt "$n" ]; do
		p="write_files.$i"
		i=$((i + 1))
		path=$(yget "$f" "$p.path" 2>/dev/null) || continue
		enc=$(yget "$f" "$p.encoding" 2>/dev/null)
		perm=$(yget "$f" "$p.permissions" 2>/dev/null) || perm=0644
		owner=$(yget "$f" "$p.owner" 2>/dev/null)
		mkdir -p "$(dirname "$path")"
		if yis_true "$f" "$p.append"; then
			yget "$f" "$p.content" 2>/dev/null | decode_content "$enc" >>"$path"
		else
			yget "$f" "$p.content" 2>/dev/null | decode_content "$enc" >"$path.tmp.$$" && mv "$path.tmp.$$" "$path"
		fi
		chmod "$perm" "$path" 2>/dev/null
		[ -n "$owner" ] && chown "$owner" "$path" 2>/dev/null
		log "wrote $path"
	done
}

# /dev/disk/by-path links as udev would make them, for virtio-blk and
# virtio-scsi disks (mount scripts generated by virtlet use them)
make_disk_links() {
	local b name real part pci rest hctl host base c t lun l
	mkdir -p /dev/disk/by-path
	for b in /sys/class/block/*; do
		name=${b##*/}
		real=$(readlink -f "$b")
		part=
		[ -f "$b/partition" ] && part="-part$(cat "$b/partition")"
		pci=$(echo "$real" | sed -n 's|.*/\([0-9a-f]\{4\}:[0-9a-f]\{2\}:[0-9a-f]\{2\}\.[0-9a-f]\)/virtio[0-9]*/.*|\1|p')
		[ -n "$pci" ] || continue
		case "$real" in
		*/virtio*/host*/target*/block/*)
			hctl=$(echo "$real" | sed -n 's|.*/\([0-9]*:[0-9]*:[0-9]*:[0-9]*\)/block/.*|\1|p')
			[ -n "$hctl" ] || continue
			host=${hctl%%:*}
			rest=${hctl#*:}
			base=$(ls -d /sys/bus/pci/devices/"$pci"/virtio*/host* 2>/dev/null | sed 's|.*/host||' | sort -n | head -n 1)
			l="pci-$pci-scsi-$((host - ${base:-$host})):$rest$part"
			ln -sf "../../$name" "/dev/disk/by-path/$l"
			ln -sf "../../$name" "/dev/disk/by-path/virtio-$l"
			;;
		*/virtio*/block/*)
			ln -sf "../../$name" "/dev/disk/by-path/pci-$pci$part"
			ln -sf "../../$name" "/dev/disk/by-path/virtio-pci-$pci$part"
			;;
		esac
	done
}

do_mounts() {
	local f="$1" n i dev dir fs opts o clean
	n=$(ylen "$f" mounts)
	i=0
	while [ "$i" -lt "$n" ]; do
		local p="mounts.$i"
		i=$((i + 1))
		dev=$(yget "$f" "$p.0" 2>/dev/null) || continue
		dir=$(yget "$f" "$p.1" 2>/dev/null) || continue
		fs=$(yget "$f" "$p.2" 2>/dev/null) || fs=auto
		opts=$(yget "$f" "$p.3" 2>/dev/null) || opts=defaults
		case "$dir" in None|none|null|'') continue ;; esac
		case "$fs" in
		9p|virtiofs|nfs|nfs4|cifs|tmpfs) ;;
		*)
			case "$dev" in
			/*|LABEL=*|UUID=*) ;;
			*) dev="/dev/$dev" ;;
			esac ;;
		esac
		# drop options busybox mount / the kernel would not understand
		clean=
		local IFS=,
		for o in $opts; do
			case "$o" in x-*|_netdev|nofail|comment=*|'') ;; *) clean="${clean:+$clean,}$o" ;; esac
		done
		unset IFS
		case "$dev" in
		/dev/*)
			local w=0
			while [ ! -e "$dev" ] && [ "$w" -lt 50 ]; do sleep 0.1; w=$((w + 1)); make_disk_links; done ;;
		esac
		mkdir -p "$dir"
		echo "$dev $dir $fs ${clean:-defaults} 0 0" >>/etc/fstab
		if [ "$fs" = auto ]; then
			mount -o "${clean:-defaults}" "$dev" "$dir"
		else
			mount -t "$fs" -o "${clean:-defaults}" "$dev" "$dir"
		fi && log "mounted $dev on $dir" || log "mount $dev on $dir failed"
	done
}

# writes the commands of list PATH (strings or argv lists) as a shell script
commands_script() {
	local f="$1" key="$2" out="$3" n i j m t line
	n=$(ylen "$f" "$key")
	[ "$n" -gt 0 ] || return 1
	echo '#!/bin/sh' >"$out"
	i=0
	while [ "$i" -lt "$n" ]; do
		t=$(ytype "$f" "$key.$i")
		case "$t" in
		s) yget "$f" "$key.$i" >>"$out"; echo >>"$out" ;;
		l)
			m=$(ylen "$f" "$key.$i"); j=0; line=
			while [ "$j" -lt "$m" ]; do
				line="$line $(shquote "$(yget "$f" "$key.$i.$j")")"
				j=$((j + 1))
			done
			echo "$line" >>"$out" ;;
		esac
		i=$((i + 1))
	done
	chmod 755 "$out"
}

# runs a script with its output on the console; a missing interpreter
# (e.g. #!/bin/bash) falls back to busybox sh
run_script() {
	local s="$1" interp
	interp=$(head -n 1 "$s" | sed -n 's/^#![[:space:]]*\([^[:space:]]*\).*/\1/p')
	chmod 755 "$s"
	log "running $s"
	if [ -n "$interp" ] && [ -x "$interp" ]; then
		(load_cloud_env; cd /root && "$s") </dev/null
	else
		(load_cloud_env; cd /root && sh "$s") </dev/null
	fi
	local rc=$?
	[ "$rc" = 0 ] || log "$s exited with $rc"
}

USER_SCRIPT=
# applies user-data; the final stage (runcmd / script) is left in USER_SCRIPT
apply_user_data() {
	local ud
	ud=$(user_data_file)
	[ -n "$ud" ] && [ -s "$ud" ] || return 0
	mkdir -p /var/lib/cloud/instance/scripts /var/lib/cloud/scripts/per-boot \
		/var/lib/cloud/scripts/per-instance /var/lib/cloud/scripts/per-once
	case "$(head -c 64 "$ud")" in
	'#!'*)
		cp "$ud" /var/lib/cloud/instance/scripts/user-script
		USER_SCRIPT=/var/lib/cloud/instance/scripts/user-script
		;;
	'#cloud-config'*)
		flatten "$ud" "$UDF"
		if commands_script "$UDF" bootcmd /var/lib/cloud/instance/scripts/bootcmd; then
			run_script /var/lib/cloud/instance/scripts/bootcmd
		fi
		write_files "$UDF"
		make_disk_links
		do_mounts "$UDF"
		local h
		h=$(yget "$UDF" fqdn 2>/dev/null || yget "$UDF" hostname 2>/dev/null) && set_hostname "$h"
		yvalues "$UDF" ssh_authorized_keys >>"$CI_KEYS"
		commands_script "$UDF" runcmd /var/lib/cloud/instance/scripts/runcmd &&
			USER_SCRIPT=/var/lib/cloud/instance/scripts/runcmd
		;;
	*)
		log "user-data format not supported (only #! scripts and #cloud-config)"
		;;
	esac
}
