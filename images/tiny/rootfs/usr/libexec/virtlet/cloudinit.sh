# cloud-init subset for the virtlet tiny test image (busybox ash).
# Sourced by /etc/init.d/rcS. Data sources: NoCloud (label cidata/CIDATA,
# ISO9660 or FAT) and ConfigDrive (label config-2).
# YAML/JSON documents are flattened once by yaml2flat.awk and queried with
# flatq.awk, batching lookups (process start-up dominates under emulation).

. /usr/libexec/virtlet/netlib.sh

LIBEXEC=/usr/libexec/virtlet
CI_DIR=/run/virtlet
DS_MNT=$CI_DIR/ds
DS_TYPE=none
MD=$CI_DIR/meta-data.flat
UDF=$CI_DIR/user-data.flat
NET=$CI_DIR/network.flat
CI_HOSTNAME=
CI_KEYS=$CI_DIR/keys
US=$(printf '\037')

log() {
	local up
	read -r up _ </proc/uptime
	echo "virtlet-init: [$up] $*"
}

# ---- flattened YAML/JSON access ----
flatten() { awk -f "$LIBEXEC/yaml2flat.awk" "$1" >"$2" 2>/dev/null || : >"$2"; }
# eval "$(yvars FILE var=path var2=path# var3=path?)"  (see flatq.awk)
yvars() { local f="$1"; shift; awk -f "$LIBEXEC/flatq.awk" -v m=vars -v q="$*" "$f"; }
# yvalues FILE PATH: scalar / list items / map values, one a line
yvalues() { awk -f "$LIBEXEC/flatq.awk" -v m=values -v p="$2" "$1"; }
# ypairs FILE PATH: "key=value" for each scalar of map PATH
ypairs() { awk -f "$LIBEXEC/flatq.awk" -v m=pairs -v p="$2" "$1"; }
# yitems FILE PATH "f1 f2": "index US f1 US f2" lines, values escaped
yitems() { awk -f "$LIBEXEC/flatq.awk" -v m=items -v p="$2" -v f="$3" "$1"; }
# yget FILE PATH: exact scalar value (incl. newlines); fails if absent
yget() {
	local v
	v=$(awk -f "$LIBEXEC/flatq.awk" -v m=get -v p="$2" "$1") || return 1
	printf '%b' "$v"
}
unesc() { printf '%b' "$1"; }
is_true() { case "$1" in true|True|TRUE|yes|Yes|on|1) return 0 ;; esac; return 1; }

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
		load_fs_modules "$t"
		mount -t "$t" -o ro "$dev" "$DS_MNT" 2>/dev/null && break
	done
	grep -q " $DS_MNT " /proc/mounts || { log "cannot mount $dev"; return 1; }
	case "$label" in
	config-2|CONFIG-2) DS_TYPE=configdrive ;;
	*) DS_TYPE=nocloud ;;
	esac
	log "data source $DS_TYPE on $dev ($t)"
}

# ---- meta-data ----
read_metadata() {
	: >"$MD"
	local iid="" name="" hn="" uuid="" f
	case "$DS_TYPE" in
	nocloud)
		f=$DS_MNT/meta-data
		[ -f "$f" ] && flatten "$f" "$MD"
		eval "$(yvars "$MD" iid=instance-id name=local-hostname hn=hostname)"
		CI_HOSTNAME=${name:-$hn}
		yvalues "$MD" public-keys >>"$CI_KEYS"
		yvalues "$MD" public_keys >>"$CI_KEYS"
		;;
	configdrive)
		f=$DS_MNT/openstack/latest/meta_data.json
		[ -f "$f" ] && flatten "$f" "$MD"
		eval "$(yvars "$MD" uuid=uuid hn=hostname name=name)"
		CI_HOSTNAME=${hn:-$name}
		iid=$uuid
		yvalues "$MD" public_keys >>"$CI_KEYS"
		;;
	esac
	log "instance-id=${iid:-?} hostname=${CI_HOSTNAME:-?}"
}

set_hostname() {
	local fqdn="$1" short
	[ -n "$fqdn" ] || return 0
	short=${fqdn%%.*}
	hostname "$short"
	echo "$short" >/etc/hostname
	{
		grep -v '^127\.0\.1\.1' /etc/hosts
		if [ "$fqdn" != "$short" ]; then echo "127.0.1.1 $fqdn $short"; else echo "127.0.1.1 $short"; fi
	} >/etc/hosts.new
	mv /etc/hosts.new /etc/hosts
}

install_ssh_keys() {
	mkdir -p /root/.ssh
	chmod 700 /root /root/.ssh
	# unique, non-empty keys in their original order
	touch /root/.ssh/authorized_keys "$CI_KEYS"
	awk 'NF && !seen[$0]++' /root/.ssh/authorized_keys "$CI_KEYS" >/root/.ssh/authorized_keys.new
	mv /root/.ssh/authorized_keys.new /root/.ssh/authorized_keys
	chmod 600 /root/.ssh/authorized_keys
	[ -s /root/.ssh/authorized_keys ] && log "authorized_keys: $(awk 'END { print NR }' /root/.ssh/authorized_keys) key(s)"
	return 0
}

# ---- kernel modules (lists made at build time: load.<group>) ----
load_group() {
	local d=/lib/modules/$(uname -r) m
	[ -e "$CI_DIR/loaded.$1" ] && return 0
	: >"$CI_DIR/loaded.$1"
	[ -f "$d/load.$1" ] || return 0
	while read -r m; do
		insmod "$d/$m" 2>/dev/null
	done <"$d/load.$1"
	return 0
}
load_fs_modules() {
	case "$1" in
	iso9660|vfat|msdos|fat|ext2|ext3|ext4|auto) load_group fs ;;
	9p) load_group 9p ;;
	esac
}
# device module groups for the virtio PCI devices present
load_device_modules() {
	local d v id groups=" core "
	for d in /sys/bus/pci/devices/*; do
		read -r v <"$d/vendor"
		[ "$v" = 0x1af4 ] || continue
		read -r id <"$d/device"
		case "$id" in
		0x1000|0x1041) groups="$groups net " ;;
		0x1001|0x1042) groups="$groups blk " ;;
		0x1004|0x1048) groups="$groups scsi " ;;
		0x1005|0x1044) groups="$groups rng " ;;
		0x1003|0x1043) groups="$groups serial " ;;
		esac
	done
	for d in core blk scsi net rng serial; do
		case "$groups" in *" $d "*) load_group "$d" ;; esac
	done
}

# ---- resolver (cloud-init's manage_resolv_conf / resolv_conf) ----
# apply_resolv_conf FLAT: servers, search domains and options (ndots:N, rotate, ...); the
# options are kept in /etc/resolv.conf.options, which write_resolv_conf (DHCP too) appends
apply_resolv_conf() {
	local mrc opts="" k v line
	eval "$(yvars "$1" mrc=manage_resolv_conf)"
	is_true "$mrc" || return 0
	while IFS= read -r line; do
		[ -n "$line" ] || continue
		k=${line%%=*}
		v=${line#*=}
		case "$v" in
		true|True) opts="$opts $k" ;;
		false|False|'') ;;
		*) opts="$opts $k:$v" ;;
		esac
	done <<EOF
$(ypairs "$1" resolv_conf.options)
EOF
	if [ -n "$opts" ]; then
		echo "options$opts" >/etc/resolv.conf.options
	else
		rm -f /etc/resolv.conf.options
	fi
	write_resolv_conf "$(yvalues "$1" resolv_conf.nameservers)" "$(yvalues "$1" resolv_conf.searchdomains)"
}

# ---- QEMU guest agent (exec) ----
# start_guest_agent: runs qemu-ga on the virtio-serial port named
# org.qemu.guest_agent.0 (no udev here to make /dev/virtio-ports/ links)
start_guest_agent() {
	local p n
	command -v qemu-ga >/dev/null || return 0
	for p in /sys/class/virtio-ports/*; do
		read -r n <"$p/name" 2>/dev/null || continue
		[ "$n" = org.qemu.guest_agent.0 ] || continue
		mkdir -p /run/qemu-ga
		qemu-ga -d -m virtio-serial -p "/dev/${p##*/}" -f /run/qemu-ga.pid \
			-t /run/qemu-ga -l /var/log/qemu-ga.log &&
			log "guest agent started on /dev/${p##*/}"
		return 0
	done
	log "no guest agent channel"
}

# ---- network ----
ether_ifaces() {
	local d t
	for d in /sys/class/net/*; do
		read -r t <"$d/type" 2>/dev/null || continue
		[ "$t" = 1 ] && [ -e "$d/device" ] && echo "${d##*/}"
	done
}
# find_iface MAC NAME -> interface name
find_iface() {
	local mac="$1" name="$2" i a
	if [ -n "$mac" ]; then
		mac=$(echo "$mac" | tr 'A-F' 'a-f')
		for i in $(ether_ifaces); do
			read -r a <"/sys/class/net/$i/address"
			[ "$a" = "$mac" ] && { echo "$i"; return 0; }
		done
		return 1
	fi
	[ -n "$name" ] && [ -e "/sys/class/net/$name" ] && { echo "$name"; return 0; }
	return 1
}
# renames a matched interface to the configured name (as cloud-init does)
rename_iface() {
	local cur="$1" want="$2"
	if [ -z "$want" ] || [ "$cur" = "$want" ] || [ -e "/sys/class/net/$want" ]; then
		echo "$cur"
		return
	fi
	ip link set dev "$cur" down 2>/dev/null
	if ip link set dev "$cur" name "$want" 2>/dev/null; then echo "$want"; else echo "$cur"; fi
}

DHCP_IFACES=
CONFIGURED_IFACES=

# configure_static IFACE ADDRESS NETMASK|PREFIX GATEWAY
configure_static() {
	local dev="$1" addr="$2" mask="$3" gw="$4"
	case "$addr" in
	*:*) ip -6 addr add "$addr" dev "$dev" ;;
	*/*) ip addr add "$addr" dev "$dev" ;;
	*) ip addr add "$addr/$(mask2prefix "${mask:-32}")" dev "$dev" ;;
	esac
	[ -n "$gw" ] && add_route default "$gw" "$dev"
	log "static address $addr${mask:+ netmask $mask} on $dev${gw:+ gateway $gw}"
}

# add_routes FILE LISTPATH IFACE: items {network|destination, netmask|prefix, gateway}
add_routes() {
	local f="$1" p="$2" dev="$3" i net dst mask pfx gw
	yitems "$f" "$p" "network destination netmask prefix gateway" |
		while IFS="$US" read -r i net dst mask pfx gw; do
			net=${net:-$dst}
			mask=${mask:-$pfx}
			[ -n "$net" ] || continue
			case "$net" in */*) ;; *) net="$net/$(mask2prefix "${mask:-32}")" ;; esac
			add_route "$net" "$gw" "$dev"
		done
}

# NoCloud network-config version 1
apply_network_v1() {
	local f="$1" pre="$2" n i t dev mac name mtu nsub j st addr netmask prefix gateway nsa nss
	eval "$(yvars "$f" n="${pre}config#")"
	i=0
	while [ "$i" -lt "$n" ]; do
		local c="${pre}config.$i"
		i=$((i + 1))
		eval "$(yvars "$f" t="$c.type" mac="$c.mac_address" name="$c.name" mtu="$c.mtu" nsub="$c.subnets#")"
		case "$t" in
		physical)
			if ! dev=$(find_iface "$mac" "$name"); then
				log "network-config: no interface for ${mac:-$name}"
				continue
			fi
			dev=$(rename_iface "$dev" "$name")
			[ -n "$mtu" ] && ip link set dev "$dev" mtu "$mtu"
			ip link set dev "$dev" up
			CONFIGURED_IFACES="$CONFIGURED_IFACES $dev"
			j=0
			while [ "$j" -lt "$nsub" ]; do
				local s="$c.subnets.$j"
				j=$((j + 1))
				eval "$(yvars "$f" st="$s.type" addr="$s.address" netmask="$s.netmask" prefix="$s.prefix" gateway="$s.gateway" nsa="$s.dns_nameservers?" nss="$s.dns_search?")"
				case "$st" in
				static|static4|static6)
					[ -n "$addr" ] && configure_static "$dev" "$addr" "${netmask:-$prefix}" "$gateway"
					add_routes "$f" "$s.routes" "$dev"
					[ -n "$nsa$nss" ] && write_resolv_conf "$(yvalues "$f" "$s.dns_nameservers")" "$(yvalues "$f" "$s.dns_search")"
					;;
				dhcp|dhcp4) DHCP_IFACES="$DHCP_IFACES $dev" ;;
				*) log "network-config: subnet type '$st' not supported on $dev" ;;
				esac
			done
			;;
		nameserver)
			write_resolv_conf "$(yvalues "$f" "$c.address")" "$(yvalues "$f" "$c.search")"
			;;
		route)
			local rdev
			rdev=$(ip -4 route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')
			[ -n "$rdev" ] || rdev=${CONFIGURED_IFACES# }
			rdev=${rdev%% *}
			eval "$(yvars "$f" net="$c.network" dst="$c.destination" netmask="$c.netmask" prefix="$c.prefix" gateway="$c.gateway")"
			net=${net:-$dst}
			case "$net" in */*) ;; ?*) net="$net/$(mask2prefix "${netmask:-${prefix:-32}}")" ;; esac
			[ -n "$rdev" ] && [ -n "$net" ] && add_route "$net" "$gateway" "$rdev"
			;;
		*) log "network-config: entry type '$t' not supported" ;;
		esac
	done
}

# ConfigDrive network_data.json (links / networks / services)
apply_network_configdrive() {
	local f="$1" i link t ip nm gw dev mac mtu id lmac lmtu ty addr search
	yitems "$f" links "id ethernet_mac_address mtu" >"$CI_DIR/links"
	yitems "$f" networks "link type ip_address netmask gateway" >"$CI_DIR/networks"
	while IFS="$US" read -r i link t ip nm gw; do
		dev= mac= mtu=
		while IFS="$US" read -r _ id lmac lmtu; do
			[ "$(unesc "$id")" = "$(unesc "$link")" ] && { mac=$lmac; mtu=$lmtu; break; }
		done <"$CI_DIR/links"
		if ! dev=$(find_iface "$mac" "$link"); then
			log "network_data: no interface for link ${link:-?}"
			continue
		fi
		[ -n "$mtu" ] && ip link set dev "$dev" mtu "$mtu"
		ip link set dev "$dev" up
		CONFIGURED_IFACES="$CONFIGURED_IFACES $dev"
		case "$t" in
		ipv4|ipv6)
			[ -n "$ip" ] && configure_static "$dev" "$ip" "$nm" "$gw"
			add_routes "$f" "networks.$i.routes" "$dev"
			;;
		ipv4_dhcp|dhcp4|dhcp) DHCP_IFACES="$DHCP_IFACES $dev" ;;
		*) log "network_data: network type '$t' not supported" ;;
		esac
	done <"$CI_DIR/networks"
	yitems "$f" services "type" | while IFS="$US" read -r i ty; do
		case "$ty" in
		dns|nameserver)
			write_resolv_conf "$(yvalues "$f" "services.$i.address")" "$(yvalues "$f" "services.$i.search")" ;;
		esac
	done
}

DHCP_PIDS=
# starts udhcpc on each interface (in the background: wait_dhcp waits)
start_dhcp() {
	local i
	for i in "$@"; do
		ip link set dev "$i" up
		udhcpc -i "$i" -s /usr/share/udhcpc/default.script -b -t 10 -T 1 -A 3 \
			-O staticroutes -O search -O mtu -x "hostname:$(hostname)" \
			-p "/run/udhcpc.$i.pid" >"/var/log/udhcpc.$i.log" 2>&1 &
		DHCP_PIDS="$DHCP_PIDS $!"
	done
}
wait_dhcp() {
	local p
	for p in $DHCP_PIDS; do wait "$p"; done
	DHCP_PIDS=
}

configure_network() {
	ip link set dev lo up
	local nc="" fmt="" v1
	case "$DS_TYPE" in
	nocloud) [ -f "$DS_MNT/network-config" ] && nc="$DS_MNT/network-config" ;;
	configdrive) [ -f "$DS_MNT/openstack/latest/network_data.json" ] && nc="$DS_MNT/openstack/latest/network_data.json" ;;
	esac
	if [ -n "$nc" ]; then
		flatten "$nc" "$NET"
		if [ "$DS_TYPE" = configdrive ]; then
			apply_network_configdrive "$NET"
		else
			eval "$(yvars "$NET" v1=version fmt=network.version)"
			if [ "$fmt" = 1 ]; then
				apply_network_v1 "$NET" network.
			elif [ "$v1" = 1 ]; then
				fmt=1
				apply_network_v1 "$NET" ""
			else
				log "network-config version ${fmt:-$v1} not supported, using DHCP"
			fi
		fi
	fi
	if [ -z "$CONFIGURED_IFACES" ]; then
		DHCP_IFACES=$(ether_ifaces)
	fi
	if [ -n "$DHCP_IFACES" ]; then
		log "DHCP on" $DHCP_IFACES
		# shellcheck disable=SC2086
		start_dhcp $DHCP_IFACES
	fi
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
	local f="$1" i path enc perm owner app content
	yitems "$f" write_files "path encoding permissions owner append content" >"$CI_DIR/write_files"
	while IFS="$US" read -r i path enc perm owner app content; do
		[ -n "$path" ] || continue
		path=$(unesc "$path")
		mkdir -p "${path%/*}"
		if is_true "$app"; then
			printf '%b' "$content" | decode_content "$enc" >>"$path"
		else
			printf '%b' "$content" | decode_content "$enc" >"$path.tmp.$$" && mv "$path.tmp.$$" "$path"
		fi
		chmod "${perm:-0644}" "$path" 2>/dev/null
		[ -n "$owner" ] && chown "$owner" "$path" 2>/dev/null
		log "wrote $path"
	done <"$CI_DIR/write_files"
}

# /dev/disk/by-path links as udev makes them, for virtio-blk and virtio-scsi
# disks (mount scripts generated by virtlet use them); globs only, no forks
# but ln
P_PCI=/sys/bus/pci/devices
make_disk_links() {
	mkdir -p /dev/disk/by-path
	local p pci name part hctl host base h l
	# virtio-blk: pci-<addr>[-partN], virtio-pci-<addr>[-partN]
	for p in $P_PCI/*/virtio*/block/* $P_PCI/*/virtio*/block/*/*/partition; do
		[ -e "$p" ] || continue
		pci=${p#$P_PCI/}
		pci=${pci%%/*}
		part=
		case "$p" in
		*/partition) read -r part <"$p"; part="-part$part"; p=${p%/partition} ;;
		esac
		name=${p##*/}
		ln -sf "../../$name" "/dev/disk/by-path/pci-$pci$part"
		ln -sf "../../$name" "/dev/disk/by-path/virtio-pci-$pci$part"
	done
	# virtio-scsi: pci-<addr>-scsi-<host>:<channel>:<target>:<lun>[-partN]
	for p in $P_PCI/*/virtio*/host*/target*/*:*:*:*/block/* $P_PCI/*/virtio*/host*/target*/*:*:*:*/block/*/*/partition; do
		[ -e "$p" ] || continue
		pci=${p#$P_PCI/}
		pci=${pci%%/*}
		part=
		case "$p" in
		*/partition) read -r part <"$p"; part="-part$part"; p=${p%/partition} ;;
		esac
		name=${p##*/}
		hctl=${p%/block/*}
		hctl=${hctl##*/}
		host=${hctl%%:*}
		base=$host
		for h in $P_PCI/$pci/virtio*/host*; do
			h=${h##*/host}
			[ "$h" -lt "$base" ] 2>/dev/null && base=$h
		done
		l="pci-$pci-scsi-$((host - base)):${hctl#*:}$part"
		ln -sf "../../$name" "/dev/disk/by-path/$l"
		ln -sf "../../$name" "/dev/disk/by-path/virtio-$l"
	done
}

do_mounts() {
	local f="$1" i dev dir fs opts o clean w
	yitems "$f" mounts "0 1 2 3" >"$CI_DIR/mounts"
	[ -s "$CI_DIR/mounts" ] || return 0
	while IFS="$US" read -r i dev dir fs opts; do
		dev=$(unesc "$dev")
		dir=$(unesc "$dir")
		fs=${fs:-auto}
		opts=${opts:-defaults}
		case "$dir" in None|none|null|'') continue ;; esac
		[ -n "$dev" ] || continue
		case "$fs" in
		virtiofs|nfs|nfs4|cifs|tmpfs|9p) ;;
		*)
			case "$dev" in
			/*|LABEL=*|UUID=*) ;;
			*) dev="/dev/$dev" ;;
			esac ;;
		esac
		# drop options busybox mount / the kernel would not understand
		clean=
		for o in $(echo "$opts" | tr ',' ' '); do
			case "$o" in x-*|_netdev|nofail|comment=*) ;; *) clean="${clean:+$clean,}$o" ;; esac
		done
		case "$dev" in
		/dev/*)
			w=0
			while [ ! -e "$dev" ] && [ "$w" -lt 50 ]; do sleep 0.1; w=$((w + 1)); make_disk_links; done ;;
		esac
		load_fs_modules "$fs"
		[ "$fs" = auto ] && { load_fs_modules vfat; load_fs_modules iso9660; }
		mkdir -p "$dir"
		echo "$dev $dir $fs ${clean:-defaults} 0 0" >>/etc/fstab
		if [ "$fs" = auto ]; then
			mount -o "${clean:-defaults}" "$dev" "$dir"
		else
			mount -t "$fs" -o "${clean:-defaults}" "$dev" "$dir"
		fi && log "mounted $dev on $dir" || log "mount $dev on $dir failed"
	done <"$CI_DIR/mounts"
}

# commands_script FILE LISTPATH OUT: the list (strings or argv lists) as a script
commands_script() {
	{
		echo '#!/bin/sh'
		awk -f "$LIBEXEC/flatq.awk" -v m=commands -v p="$2" "$1"
	} >"$3"
	[ "$(wc -l <"$3")" -gt 1 ] || { rm -f "$3"; return 1; }
	chmod 755 "$3"
}

# runs a script with its output on the console; a missing interpreter
# (e.g. #!/bin/bash) falls back to busybox sh
run_script() {
	local s="$1" interp rc
	interp=$(sed -n '1s/^#![[:space:]]*\([^[:space:]]*\).*/\1/p' "$s")
	chmod 755 "$s"
	log "running $s"
	if [ -n "$interp" ] && [ -x "$interp" ]; then
		(load_cloud_env; cd /root && exec "$s") </dev/null
	else
		(load_cloud_env; cd /root && exec sh "$s") </dev/null
	fi
	rc=$?
	[ "$rc" = 0 ] || log "$s exited with $rc"
}

# run_container SCRIPT: runs SCRIPT as a container's process would run without a terminal:
# stdin is the console (no echo; Ctrl-D on an empty line is end-of-file, which is how virtlet
# closes a stdinOnce container's stdin), stdout and stderr reach the console through a pipe,
# so a shell is not interactive (no banner, no prompt), as with `docker run -i`. The VM powers
# off when the script ends.
run_container() {
	local s="$1" rc
	chmod 755 "$s"
	echo 1 >/proc/sys/kernel/printk   # only emergencies: kernel lines would mix into output
	stty -F /dev/console -echo -onlcr icanon 2>/dev/null
	rm -f /run/container-rc
	( (load_cloud_env; cd /root && exec sh "$s") </dev/console 2>&1
		echo "$?" >/run/container-rc) | cat >/dev/console
	read -r rc </run/container-rc 2>/dev/null
	stty -F /dev/console echo onlcr 2>/dev/null
	log "container process exited with status ${rc:-?}; powering off"
	sync
	poweroff -f
}

USER_SCRIPT=
# applies user-data; the final stage (runcmd / script) is left in USER_SCRIPT
apply_user_data() {
	local ud hn fq first
	ud=$(user_data_file)
	[ -n "$ud" ] && [ -s "$ud" ] || return 0
	mkdir -p /var/lib/cloud/instance/scripts /var/lib/cloud/scripts/per-boot \
		/var/lib/cloud/scripts/per-instance /var/lib/cloud/scripts/per-once
	read -r first <"$ud"
	case "$first" in
	'#!'*)
		cp "$ud" /var/lib/cloud/instance/scripts/user-script
		USER_SCRIPT=/var/lib/cloud/instance/scripts/user-script
		;;
	'#cloud-config'*)
		flatten "$ud" "$UDF"
		if commands_script "$UDF" bootcmd /var/lib/cloud/instance/scripts/bootcmd; then
			run_script /var/lib/cloud/instance/scripts/bootcmd
		fi
		apply_resolv_conf "$UDF"
		write_files "$UDF"
		do_mounts "$UDF"
		eval "$(yvars "$UDF" hn=hostname fq=fqdn)"
		set_hostname "${fq:-$hn}"
		yvalues "$UDF" ssh_authorized_keys >>"$CI_KEYS"
		commands_script "$UDF" runcmd /var/lib/cloud/instance/scripts/runcmd &&
			USER_SCRIPT=/var/lib/cloud/instance/scripts/runcmd
		;;
	*)
		log "user-data format not supported (only #! scripts and #cloud-config)"
		;;
	esac
	return 0
}
