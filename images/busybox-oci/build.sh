# Sourced by images/build: "busybox-oci", container images for containerd (not a VM image).
#
# An OCI archive (a tar of an OCI image layout, as `ctr images import` and skopeo's
# oci-archive: read it) made with umoci from Debian's busybox-static, without a registry.
# One layer, shared by three references:
#
#   docker.io/library/busybox:local     CMD /bin/sh
#   registry.k8s.io/pause:3.6           CMD /bin/tail -f /dev/null  (containerd 1.6's sandbox image)
#   docker.io/library/webserver:local   CMD /bin/httpd -f -p 80 -h /www, exposes 80/tcp
#
# The layer: /bin/busybox with every applet of `busybox --list` as a symlink beside it (critest
# execs top, ls, sh, ...), /bin/pgrep (the tiny image's script: Debian's busybox has no pgrep
# applet, and critest's "execSync with timeout" runs pgrep), /tmp (1777), /root, /etc/passwd and
# /etc/group (root, nobody) and /www/index.html. It is written by tar (sorted, owner 0:0, fixed mtime) and added with
# `umoci raw add-layer`, so the build needs no root and no mounts; all timestamps are the
# mtime of /bin/busybox, so the same busybox-static and umoci give the same digests.
#
# The pause process is `tail -f /dev/null`, not `sleep infinity`: containers share the pause's
# PID namespace unless the pod asks otherwise (critest's pods do), and critest's "execSync with
# timeout" fails when `pgrep sleep` finds anything. Like sleep, it blocks forever and ignores
# SIGTERM as PID 1 (containerd stops sandboxes with SIGKILL); unlike the real pause it does not
# reap zombies.
BUSYBOX_OCI_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
BUSYBOX_OCI_PGREP=$IMAGES_DIR/tiny/rootfs/usr/bin/pgrep
BUSYBOX_OCI_REFS="docker.io/library/busybox:local registry.k8s.io/pause:3.6 docker.io/library/webserver:local"

build_busybox_oci() {
	need_tools busybox umoci tar ldd dpkg-query sha256sum
	local bb
	bb=$(command -v busybox)
	if ldd "$bb" >/dev/null 2>&1; then
		die "$bb is dynamically linked: install busybox-static"
	fi

	local inputs
	inputs=$(printf '%s\n' "scripts $(scripts_hash busybox-oci)" \
		"busybox-static $(pkg_version busybox-static)" "umoci $(pkg_version umoci)" \
		"pgrep $(sha256sum <"$BUSYBOX_OCI_PGREP" | cut -d' ' -f1)" \
		"refs $BUSYBOX_OCI_REFS" | sort -u)
	if up_to_date busybox-oci "$inputs" tar; then
		log "busybox-oci archive is up to date"
		echo "$CACHE/busybox-oci/busybox-oci.tar"
		return 0
	fi
	log "building busybox-oci archive (busybox-static $(pkg_version busybox-static))"

	WORK=$(mktemp -d "$CACHE/.busybox-oci.build.XXXXXX")
	local root=$WORK/rootfs epoch created a
	epoch=$(stat -c %Y "$(readlink -f "$bb")")
	created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

	# ---- the layer ----
	mkdir -p "$root"/{bin,etc,tmp,root,www}
	chmod 755 "$root" "$root/bin" "$root/etc" "$root/www"
	chmod 1777 "$root/tmp"
	chmod 700 "$root/root"
	install -m 755 "$bb" "$root/bin/busybox"
	for a in $("$bb" --list); do
		[ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
	done
	[ -e "$root/bin/pgrep" ] || install -m 755 "$BUSYBOX_OCI_PGREP" "$root/bin/pgrep"
	printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/home:/bin/false' >"$root/etc/passwd"
	printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$root/etc/group"
	# the title critest's web server checks look for
	echo '<html><head><title>Welcome to nginx!</title></head><body>virtlet busybox-oci webserver</body></html>' >"$root/www/index.html"
	chmod 644 "$root/etc/passwd" "$root/etc/group" "$root/www/index.html"
	tar -C "$root" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
		-cf "$WORK/layer.tar" .

	# ---- the OCI layout: one base image, three configs ----
	local oci=$WORK/oci
	umoci init --layout "$oci" >&2
	umoci new --image "$oci:base" >&2
	umoci raw add-layer --image "$oci:base" --history.created "$created" \
		--history.created_by "virtlet images/build busybox-oci: busybox-static $(pkg_version busybox-static)" \
		"$WORK/layer.tar" >&2
	local common=(--created "$created" --history.created "$created" --architecture amd64 --os linux
		--config.env "PATH=$BUSYBOX_OCI_PATH" --config.workingdir /)
	umoci config --image "$oci:base" "${common[@]}" --config.cmd /bin/sh \
		--tag docker.io/library/busybox:local >&2
	umoci config --image "$oci:base" "${common[@]}" --config.cmd /bin/tail --config.cmd -f --config.cmd /dev/null \
		--tag registry.k8s.io/pause:3.6 >&2
	umoci config --image "$oci:base" "${common[@]}" --config.cmd /bin/httpd --config.cmd -f \
		--config.cmd -p --config.cmd 80 --config.cmd -h --config.cmd /www \
		--config.exposedports 80/tcp --tag docker.io/library/webserver:local >&2
	umoci rm --image "$oci:base" >&2
	umoci gc --layout "$oci" >&2
	local got
	got=$(umoci ls --layout "$oci" | sort | tr '\n' ' ')
	[ "$got" = "$(printf '%s\n' $BUSYBOX_OCI_REFS | sort | tr '\n' ' ')" ] ||
		die "unexpected tags in the OCI layout: $got"
	tar -C "$oci" --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner \
		-cf "$WORK/busybox-oci.tar" .

	publish busybox-oci "$WORK/busybox-oci.tar" "$inputs" tar
	local out=$CACHE/busybox-oci secs=$(($(date +%s) - START))
	{
		echo "busybox-static: $(pkg_version busybox-static), $("$bb" --list | wc -l) applets"
		echo "refs: $BUSYBOX_OCI_REFS"
		echo "tar: $(stat -c %s "$out/busybox-oci.tar") bytes"
		echo "tar sha256: $(sha256sum <"$out/busybox-oci.tar" | cut -d' ' -f1)"
		echo "build seconds: $secs"
	} >"$out/build-info"
	log "busybox-oci archive built in ${secs}s: $(stat -c %s "$out/busybox-oci.tar") bytes"
	echo "$out/busybox-oci.tar"
}
