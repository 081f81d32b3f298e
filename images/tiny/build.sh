# Sourced by images/build: the "tiny" image.
#
# A BIOS-bootable qcow2: MBR (syslinux mbr.bin) + one FAT16 partition holding
# SYSLINUX, Debian's cloud kernel and a busybox-static initramfs that runs
# the cloud-init subset of rootfs/usr/libexec/virtlet/cloudinit.sh, dropbear,
# and Debian's QEMU guest agent (qemu-ga, for exec) with its libraries. Everything runs from the initramfs; the disk is only read at boot.
#
# The same build also makes tiny-container.qcow2 (next to tiny.qcow2): the same kernel and
# initramfs plus a second archive from container/, which makes rcS run the container's
# command as its one process, with the console as stdin and output, and power off when it
# ends (a web server on port 80 when there is no command). Container tests (critest) map
# container image names to it.
#
# `images/build tiny-generic` makes the same with Debian's generic kernel (in
# $CACHE/tiny-generic/): it has 9p, which directory volumes need and the cloud kernel
# lacks, but it is 3 MB bigger, which SYSLINUX loads under TCG in about 3.5 s more.
TINY_FLAVOR=${TINY_FLAVOR:-cloud}
if [ "$TINY_FLAVOR" = generic ]; then
	TINY_NAME=tiny-generic TINY_KERNEL_META=linux-image-amd64
else
	TINY_NAME=tiny TINY_KERNEL_META=linux-image-cloud-amd64
fi

TINY_DISK_MIB=64          # virtual disk size
TINY_PART_START=2048      # sectors (1 MiB)
# kernel modules put into the initramfs (with their dependencies), by group:
# rcS loads "core" always and the device groups when such a PCI device is
# present; "fs" is loaded on demand when something is mounted.
TINY_MODULE_GROUPS="core:virtio_pci,button,evdev blk:virtio_blk scsi:virtio_scsi,sd_mod,sr_mod
	net:virtio_net rng:virtio_rng serial:virtio_console fs:isofs,vfat,ext4,nls_cp437,nls_iso8859-1,nls_ascii,nls_utf8"
[ "$TINY_FLAVOR" = generic ] && TINY_MODULE_GROUPS="$TINY_MODULE_GROUPS 9p:9p,9pnet_virtio"
# Kernel command line. Besides the console, for a fast boot under TCG:
#   cryptomgr.notests  skips the crypto self-tests (~1.7 s of emulated CPU)
#   pci=noacpi         PCI IRQ routing from the BIOS tables instead of ACPI
#                      link devices (each ACPI link takes ~0.3 s under TCG);
#                      virtio devices use MSI-X anyway
#   scsi_mod.scan=sync SCSI disks exist once virtio_scsi is loaded
#   edd=off            no BIOS EDD probing
TINY_CMDLINE="console=tty0 console=ttyS0,115200n8 edd=off scsi_mod.scan=sync cryptomgr.notests pci=noacpi"

# strips the appended signature from a kernel module (the kernel does not
# enforce signatures: CONFIG_MODULE_SIG_FORCE is off; checking them costs
# ~20 ms of emulated CPU per module)
strip_module_sig() {
	local f="$1" size siglen
	[ "$(tail -c 28 "$f")" = "~Module signature appended~" ] || return 0
	size=$(stat -c %s "$f")
	# struct module_signature (12 bytes, sig_len big-endian in the last 4) + magic (28)
	siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{ print $1 * 16777216 + $2 * 65536 + $3 * 256 + $4 }')
	[ "$siglen" -gt 0 ] && [ "$siglen" -lt "$size" ] || return 0
	truncate -s $((size - 40 - siglen)) "$f"
}

# tiny_disk OUT_QCOW2 INITRD SYSLINUX_CFG PART_MIB: the boot partition with the kernel,
# INITRD and SYSLINUX_CFG on an MBR disk, as qcow2
tiny_disk() {
	local out="$1" initrd="$2" cfg="$3" part_mib="$4"
	make_boot_fat "$WORK/boot.img" "$part_mib" "$TINY_PART_START" VIRTLETBOOT \
		"$WORK/vmlinuz" "$initrd" "$cfg"
	make_disk "$WORK/disk.raw" "$TINY_DISK_MIB" <<EOF
label: dos
start=$TINY_PART_START, type=e, bootable
EOF
	put_partition "$WORK/disk.raw" "$WORK/boot.img" "$TINY_PART_START"
	qemu-img convert -f raw -O qcow2 "$WORK/disk.raw" "$out"
	rm -f "$WORK/disk.raw" "$WORK/boot.img"
}

build_tiny() {
	need_tools apt-get apt-cache dpkg-deb dpkg-query busybox dropbear dropbearkey ldd \
		depmod modprobe cpio gzip mkfs.vfat mcopy syslinux sfdisk qemu-img od truncate
	need_file /usr/lib/syslinux/mbr/mbr.bin syslinux-common
	local bb dbr dbk
	bb=$(command -v busybox)
	dbr=$(command -v dropbear)
	dbk=$(command -v dropbearkey)
	if ldd "$bb" >/dev/null 2>&1; then
		die "$bb is dynamically linked: install busybox-static"
	fi

	# ---- inputs: scripts + exact package versions ----
	local kpkg kver_pkg libs lib p inputs
	read -r kpkg kver_pkg <<<"$(apt_meta_target "$TINY_KERNEL_META" linux-image-)"
	# the guest agent, from its .deb (not installed on the host); its libraries from the host
	local qga_ver qga_deb qga
	qga_ver=$(apt_candidate qemu-guest-agent)
	qga_deb=$(apt_download qemu-guest-agent "$qga_ver")
	qga=$CACHE/qemu-ga-${qga_ver//:/%3a}/usr/sbin/qemu-ga
	if [ ! -x "$qga" ]; then
		rm -rf "${qga%/usr/sbin/qemu-ga}"
		dpkg-deb -x "$qga_deb" "${qga%/usr/sbin/qemu-ga}"
		[ -x "$qga" ] || die "no usr/sbin/qemu-ga in $qga_deb"
	fi
	if ldd "$qga" | grep -q "not found"; then
		die "qemu-ga needs libraries this host lacks: $(ldd "$qga" | grep "not found" | tr -s ' \t\n' ' ') (install the packages qemu-guest-agent depends on)"
	fi
	libs=$( (ldd "$dbr"; ldd "$dbk"; ldd "$qga") | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
	inputs="scripts $(scripts_hash tiny)
qemu-guest-agent $qga_ver
kernel $kpkg $kver_pkg
busybox-static $(pkg_version busybox-static)
dropbear-bin $(pkg_version dropbear-bin)
syslinux $(pkg_version syslinux)
syslinux-common $(pkg_version syslinux-common)"
	# one dpkg -S for all libraries (each call reads the whole file database)
	local owners
	# shellcheck disable=SC2086
	owners=$(dpkg -S $libs 2>/dev/null) || true
	for lib in $libs; do
		p=$(printf '%s\n' "$owners" | awk -v f="$lib" '$NF == f { sub(/:.*/, "", $1); print $1; exit }')
		[ -n "$p" ] || p=$(file_pkg "$lib") || die "cannot find the Debian package of $lib"
		inputs="$inputs
lib $lib $p $(pkg_version "$p")"
	done
	inputs=$(printf '%s\n' "$inputs" | sort -u)

	if up_to_date "$TINY_NAME" "$inputs" && [ -s "$CACHE/$TINY_NAME/tiny-container.qcow2" ]; then
		log "$TINY_NAME image is up to date"
		echo "$CACHE/$TINY_NAME/$TINY_NAME.qcow2"
		return 0
	fi
	log "building $TINY_NAME image (kernel $kpkg $kver_pkg)"

	WORK=$(mktemp -d "$CACHE/.tiny.build.XXXXXX")
	local deb kroot root kver
	deb=$(apt_download "$kpkg" "$kver_pkg")
	kroot=$WORK/kernel
	root=$WORK/initramfs
	dpkg-deb -x "$deb" "$kroot"
	kver=$(cd "$kroot/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | head -n 1)
	[ -n "$kver" ] || die "no vmlinuz in $deb"
	local kmods=lib/modules/$kver
	[ -d "$kroot/$kmods" ] || { kmods=usr/lib/modules/$kver; [ -d "$kroot/$kmods" ] || die "no modules in $deb"; }
	# the .deb ships no modules.dep
	depmod -b "$kroot" "$kver"

	# ---- initramfs tree ----
	mkdir -p "$root"
	cp -a "$IMAGES_DIR/tiny/rootfs/." "$root/"
	chmod 755 "$root/etc/init.d/"* "$root/etc/acpi/PWRF/"* "$root/usr/share/udhcpc/default.script" "$root/bin/mountpoint" "$root/usr/bin/pgrep"
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,mnt,etc/dropbear,var/log,var/lib}
	chmod 700 "$root/root"
	chmod 1777 "$root/tmp"
	mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
	install -m 755 "$bb" "$root/bin/busybox"
	local a
	for a in $("$bb" --list-full); do
		[ -e "$root/$a" ] || [ -L "$root/$a" ] || ln -s /bin/busybox "$root/$a"
	done
	ln -sf bin/busybox "$root/init"

	# kernel modules: the wanted ones and their dependencies, in load order,
	# one list per group (load.<group>, paths relative to the modules dir)
	local g grp mods m line f rel
	mkdir -p "$root/lib/modules/$kver"
	: >"$WORK/all-mods"
	for g in $TINY_MODULE_GROUPS; do
		grp=${g%%:*}
		mods=${g#*:}
		: >"$root/lib/modules/$kver/load.$grp"
		for m in ${mods//,/ }; do
			modprobe -d "$kroot" -S "$kver" --show-depends "$m" >"$WORK/deps" ||
				die "module $m not found in $kpkg"
			while read -r line; do
				case "$line" in
				insmod\ *)
					f=$(echo "$line" | awk '{ print $2 }')
					rel=${f#"$kroot/$kmods/"}
					grep -qxF "$rel" "$WORK/all-mods" && continue
					echo "$rel" >>"$WORK/all-mods"
					mkdir -p "$root/lib/modules/$kver/$(dirname "$rel")"
					case "$rel" in
					*.ko.xz) xz -dc "$f" >"$root/lib/modules/$kver/${rel%.xz}"; rel=${rel%.xz} ;;
					*.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$kver/${rel%.zst}"; rel=${rel%.zst} ;;
					*.ko.gz) gzip -dc "$f" >"$root/lib/modules/$kver/${rel%.gz}"; rel=${rel%.gz} ;;
					*) cp "$f" "$root/lib/modules/$kver/$rel" ;;
					esac
					strip_module_sig "$root/lib/modules/$kver/$rel"
					echo "$rel" >>"$root/lib/modules/$kver/load.$grp"
					;;
				esac
			done <"$WORK/deps"
		done
	done
	cp "$kroot/$kmods"/modules.builtin "$kroot/$kmods"/modules.order "$root/lib/modules/$kver/"
	[ -f "$kroot/$kmods/modules.builtin.modinfo" ] && cp "$kroot/$kmods/modules.builtin.modinfo" "$root/lib/modules/$kver/"
	depmod -b "$root" "$kver"   # for busybox modprobe / kernel autoloading
	rm -f "$root/lib/modules/$kver"/*.bin

	# dropbear, qemu-ga and the shared libraries they need (per ldd), plus the loader
	install -D -m 755 "$dbr" "$root/usr/sbin/dropbear"
	install -D -m 755 "$dbk" "$root/usr/bin/dropbearkey"
	install -D -m 755 "$qga" "$root/usr/sbin/qemu-ga"
	for lib in $libs; do
		install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
	done

	(cd "$root" && find . | sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$WORK/initrd.gz"
	cp "$kroot/boot/vmlinuz-$kver" "$WORK/vmlinuz"

	# the container variant: a second archive appended (the kernel unpacks both)
	mkdir -p "$WORK/container"
	cp -a "$IMAGES_DIR/tiny/container/." "$WORK/container/"
	chmod 755 "$WORK/container/etc/virtlet/default-command"
	(cd "$WORK/container" && find . | sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$WORK/container.cpio.gz"
	mkdir -p "$WORK/variant"
	cat "$WORK/initrd.gz" "$WORK/container.cpio.gz" >"$WORK/variant/initrd.gz"

	# ---- boot partition + disk ----
	cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT virtlet
PROMPT 0
TIMEOUT 0
LABEL virtlet
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $TINY_CMDLINE
EOF
	# The container variant talks on the serial line from its first moment (SYSLINUX, the
	# kernel's early console): a client attached right after the start sees its output begin
	# at once and run on until the container's process starts, as container tests expect.
	mkdir -p "$WORK/variant/cfg"
	cat >"$WORK/variant/cfg/syslinux.cfg" <<EOF
SERIAL 0 115200
SAY virtlet tiny-container: loading the kernel
DEFAULT virtlet
PROMPT 0
TIMEOUT 0
LABEL virtlet
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $TINY_CMDLINE earlyprintk=serial,ttyS0,115200
EOF
	local part_mib=$((TINY_DISK_MIB - TINY_PART_START / 2048))
	tiny_disk "$WORK/tiny.qcow2" "$WORK/initrd.gz" "$WORK/syslinux.cfg" "$part_mib"
	tiny_disk "$WORK/tiny-container.qcow2" "$WORK/variant/initrd.gz" \
		"$WORK/variant/cfg/syslinux.cfg" "$part_mib"

	local out=$CACHE/$TINY_NAME
	mkdir -p "$out"
	mv -f "$WORK/tiny-container.qcow2" "$out/tiny-container.qcow2"
	publish "$TINY_NAME" "$WORK/tiny.qcow2" "$inputs"
	local secs=$(($(date +%s) - START))
	{
		echo "kernel: $kver ($kpkg $kver_pkg)"
		echo "vmlinuz: $(stat -c %s "$WORK/vmlinuz") bytes"
		echo "initrd.gz: $(stat -c %s "$WORK/initrd.gz") bytes"
		echo "qcow2: $(stat -c %s "$out/$TINY_NAME.qcow2") bytes"
		echo "build seconds: $secs"
	} >"$out/build-info"
	log "$TINY_NAME image built in ${secs}s: $(stat -c %s "$out/$TINY_NAME.qcow2") bytes (initrd $(stat -c %s "$WORK/initrd.gz") bytes)"
	echo "$out/$TINY_NAME.qcow2"
}
