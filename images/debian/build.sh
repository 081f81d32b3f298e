# Sourced by images/build: the "debian" image (built only on demand).
#
# Debian bookworm (debootstrap minbase + systemd, cloud-init, openssh-server,
# qemu-guest-agent, the generic kernel, which has 9p) as a BIOS-bootable qcow2:
#   MBR (syslinux mbr.bin)
#   partition 1: FAT, SYSLINUX + kernel + Debian's initrd
#   partition 2: ext4 root (made with mke2fs -d, no mount), LAST so that
#                cloud-init's growpart can grow it
# cloud-init: datasources NoCloud and ConfigDrive, locale C.UTF-8. After
# cloud-init's final stage a unit prints the same marker line as the tiny
# image: "VIRTLET-GUEST-READY hostname=<h> ip=<ip>".

DEBIAN_SUITE=bookworm
DEBIAN_MIRROR=${VIRTLET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# debootstrap does not resolve virtual packages or pick alternatives well:
# everything needed is listed
DEBIAN_INCLUDE="systemd-sysv udev dbus linux-image-amd64 initramfs-tools zstd
	cloud-init python3-cffi-backend openssh-server qemu-guest-agent ifupdown
	isc-dhcp-client iproute2 netbase procps sudo locales cloud-guest-utils e2fsprogs
	ca-certificates less"
DEBIAN_BOOT_MIB=128
DEBIAN_ROOTDIR=
DEBIAN_CMDLINE_EXTRA="console=tty0 console=ttyS0,115200n8 net.ifnames=0 biosdevname=0"

debian_cleanup_mounts() {
	# debootstrap mounts proc/sys inside the target while it runs; never
	# delete a tree that still has something mounted
	local dir="$1" m
	[ -n "$dir" ] && [ -d "$dir" ] || return 0
	for m in $(awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r); do
		umount -l "$m" 2>/dev/null || true
	done
	! awk -v d="$dir/" 'index($2 "/", d) == 1 { f = 1 } END { exit !f }' /proc/mounts
}

build_debian() {
	need_tools debootstrap chroot mke2fs mkfs.vfat mcopy syslinux sfdisk qemu-img apt-cache dpkg-query
	need_file /usr/lib/syslinux/mbr/mbr.bin syslinux-common
	[ "$(id -u)" = 0 ] || die "the debian image needs root (debootstrap, chroot)"

	# ---- inputs ----
	local release p v inputs
	release=/var/lib/apt/lists/$(echo "${DEBIAN_MIRROR#*://}" | tr '/' '_')_dists_${DEBIAN_SUITE}_InRelease
	inputs="scripts $(scripts_hash debian)
suite $DEBIAN_SUITE $DEBIAN_MIRROR
debootstrap $(pkg_version debootstrap)
e2fsprogs $(pkg_version e2fsprogs)
syslinux $(pkg_version syslinux)"
	if [ -f "$release" ]; then
		inputs="$inputs
suite-date $(awk '/^Date:/ { sub(/^Date: */, ""); print; exit }' "$release")"
	else
		log "no apt list for $DEBIAN_SUITE at $release (run apt-get update): package versions not pinned in the hash"
	fi
	for p in $DEBIAN_INCLUDE; do
		# version in the suite debootstrap uses (not -security / -updates)
		v=$(apt-cache madison "$p" 2>/dev/null | awk -v s=" $DEBIAN_SUITE/main " 'index($0, s) { print $3; exit }')
		inputs="$inputs
pkg $p ${v:-?}"
	done
	inputs=$(printf '%s\n' "$inputs" | sort -u)

	if up_to_date debian "$inputs"; then
		log "debian image is up to date"
		echo "$CACHE/debian/debian.qcow2"
		return 0
	fi

	WORK=$(mktemp -d "$CACHE/.debian.build.XXXXXX")
	local rootdir=$WORK/root
	DEBIAN_ROOTDIR=$rootdir
	trap 'debian_cleanup_mounts "$DEBIAN_ROOTDIR" && cleanup' EXIT
	local t0 t1
	t0=$(date +%s)
	log "debootstrap $DEBIAN_SUITE into $rootdir (this takes a while)"
	# downloaded .debs are kept between builds
	mkdir -p "$CACHE/debs/debootstrap"
	debootstrap --variant=minbase --cache-dir="$CACHE/debs/debootstrap" \
		--include="$(echo $DEBIAN_INCLUDE | tr ' ' ',')" \
		"$DEBIAN_SUITE" "$rootdir" "$DEBIAN_MIRROR" >&2 ||
		{ tail -n 50 "$rootdir/debootstrap/debootstrap.log" >&2 2>/dev/null; die "debootstrap failed"; }
	debian_cleanup_mounts "$rootdir" || die "debootstrap left mounts under $rootdir"
	t1=$(date +%s)
	log "debootstrap took $((t1 - t0))s"

	local kver uuid
	kver=$(cd "$rootdir/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n 1)
	[ -n "$kver" ] || die "no kernel installed in $rootdir"
	uuid=$(cat /proc/sys/kernel/random/uuid)

	# ---- configuration ----
	echo localhost >"$rootdir/etc/hostname"
	printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' >"$rootdir/etc/hosts"
	printf 'UUID=%s / ext4 rw,discard,errors=remount-ro 0 1\n' "$uuid" >"$rootdir/etc/fstab"
	: >"$rootdir/etc/resolv.conf"
	cat >"$rootdir/etc/apt/sources.list" <<EOF
deb http://deb.debian.org/debian $DEBIAN_SUITE main
deb http://deb.debian.org/debian $DEBIAN_SUITE-updates main
deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main
EOF
	mkdir -p "$rootdir/etc/cloud/cloud.cfg.d"
	cat >"$rootdir/etc/cloud/cloud.cfg.d/90-virtlet.cfg" <<'EOF'
# virtlet test image: seeds come from a NoCloud (cidata) or ConfigDrive
# (config-2) disk; keys also work for root
datasource_list: [ NoCloud, ConfigDrive ]
locale: C.UTF-8
disable_root: false
EOF
	printf 'auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n' >"$rootdir/etc/network/interfaces"
	mkdir -p "$rootdir/etc/network/interfaces.d"
	# a root shell on the serial console, as in the tiny image
	mkdir -p "$rootdir/etc/systemd/system/serial-getty@ttyS0.service.d"
	cat >"$rootdir/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 %I $TERM
EOF
	cat >"$rootdir/usr/local/sbin/virtlet-guest-ready" <<'EOF'
#!/bin/sh
ip=$(ip -4 -o addr show scope global | awk '{ split($4, a, "/"); print a[1]; exit }')
echo "VIRTLET-GUEST-READY hostname=$(hostname) ip=${ip:-none}" >/dev/ttyS0
EOF
	chmod 755 "$rootdir/usr/local/sbin/virtlet-guest-ready"
	cat >"$rootdir/etc/systemd/system/virtlet-guest-ready.service" <<'EOF'
[Unit]
Description=Print the virtlet guest-ready marker on the serial console
After=cloud-final.service ssh.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/virtlet-guest-ready

[Install]
WantedBy=cloud-init.target
EOF
	# cloud-final runs after multi-user.target: hang the unit on cloud-init.target
	mkdir -p "$rootdir/etc/systemd/system/cloud-init.target.wants"
	ln -sf /etc/systemd/system/virtlet-guest-ready.service "$rootdir/etc/systemd/system/cloud-init.target.wants/virtlet-guest-ready.service"
	# no resume device: avoids the initramfs waiting for one
	mkdir -p "$rootdir/etc/initramfs-tools/conf.d"
	echo RESUME=none >"$rootdir/etc/initramfs-tools/conf.d/resume"
	log "update-initramfs for $kver"
	chroot "$rootdir" update-initramfs -c -k "$kver" >&2 2>&1 || die "update-initramfs failed"
	debian_cleanup_mounts "$rootdir" || die "mounts left under $rootdir"
	[ -s "$rootdir/boot/initrd.img-$kver" ] || die "no initrd for $kver"
	# per-instance state is made at first boot
	rm -f "$rootdir"/etc/ssh/ssh_host_*
	: >"$rootdir/etc/machine-id"
	rm -f "$rootdir/var/lib/dbus/machine-id"
	rm -rf "$rootdir"/var/cache/apt/archives/*.deb "$rootdir"/var/lib/apt/lists/* "$rootdir/debootstrap"
	chroot "$rootdir" dpkg-query -W -f '${Package} ${Version}\n' >"$WORK/manifest"

	# ---- boot partition ----
	cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=UUID=$uuid ro $DEBIAN_CMDLINE_EXTRA
EOF
	cp "$rootdir/boot/vmlinuz-$kver" "$WORK/vmlinuz"
	cp "$rootdir/boot/initrd.img-$kver" "$WORK/initrd.img"
	make_boot_fat "$WORK/boot.img" "$DEBIAN_BOOT_MIB" 2048 VIRTLETBOOT \
		"$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg"

	# ---- root partition: ext4 from the directory, no mount ----
	local used_mib root_mib
	used_mib=$(du -sm "$rootdir" | cut -f1)
	root_mib=$(( (used_mib * 13 / 10 + 256 + 63) / 64 * 64 ))
	[ "$root_mib" -ge 1536 ] || root_mib=1536
	log "root filesystem: ${used_mib} MiB used, ${root_mib} MiB ext4"
	mke2fs -q -t ext4 -L root -U "$uuid" -d "$rootdir" -E root_owner=0:0 "$WORK/root.img" "${root_mib}M" >&2 ||
		die "mke2fs -d failed"

	# ---- disk: MBR, boot partition, root partition last ----
	local boot_start=2048 root_start disk_mib
	root_start=$((boot_start + DEBIAN_BOOT_MIB * 2048))
	disk_mib=$((1 + DEBIAN_BOOT_MIB + root_mib))
	make_disk "$WORK/disk.raw" "$disk_mib" <<EOF
label: dos
start=$boot_start, size=$((DEBIAN_BOOT_MIB * 2048)), type=e, bootable
start=$root_start, type=83
EOF
	put_partition "$WORK/disk.raw" "$WORK/boot.img" "$boot_start"
	put_partition "$WORK/disk.raw" "$WORK/root.img" "$root_start"
	qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$WORK/debian.qcow2"

	publish debian "$WORK/debian.qcow2" "$inputs"
	cp "$WORK/manifest" "$CACHE/debian/manifest"
	local secs=$(($(date +%s) - START))
	{
		echo "kernel: $kver"
		echo "root fs: ${used_mib} MiB used in ${root_mib} MiB"
		echo "qcow2: $(stat -c %s "$CACHE/debian/debian.qcow2") bytes"
		echo "debootstrap seconds: $((t1 - t0))"
		echo "build seconds: $secs"
	} >"$CACHE/debian/build-info"
	log "debian image built in ${secs}s: $(stat -c %s "$CACHE/debian/debian.qcow2") bytes"
	echo "$CACHE/debian/debian.qcow2"
}
