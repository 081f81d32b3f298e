# yaml2flat.awk: flattens a YAML document (the block/flow subset used by
# cloud-init generators) or a JSON document into lines of
#     <path> TAB <type> TAB <value>
# path: dot-separated keys / list indexes from the root ("" is the root);
# type: s = scalar, l = list (value = item count), m = map (value = key
# count), k = one line per map key (value = the key), n = null / empty.
# Scalar values are escaped: backslash -> \\, newline -> \n, tab -> \t,
# so `printf '%b'` restores them.
# Written for busybox awk (no gawk extensions).

function esc(s) {
	gsub(/\\/, "\\\\", s)
	gsub(/\n/, "\\n", s)
	gsub(/\t/, "\\t", s)
	return s
}
function emit(path, type, val) {
	printf "%s\t%s\t%s\n", path, type, esc(val)
}
function child(path, k) {
	return (path == "") ? k : path "." k
}
function indent_of(s,   n) {
	n = match(s, /[^ ]/)
	return n ? n - 1 : length(s)
}
function spaces(n,   s) {
	s = ""
	while (n-- > 0) s = s " "
	return s
}
function ltrim(s) { sub(/^[ \t\r\n]+/, "", s); return s }
function rtrim(s) { sub(/[ \t\r\n]+$/, "", s); return s }
function trim(s) { return rtrim(ltrim(s)) }
function is_skippable(s) {
	return (s ~ /^[ \t]*$/ || s ~ /^[ \t]*#/ || s ~ /^---([ \t]|$)/ || s ~ /^\.\.\.([ \t]|$)/ || s ~ /^%/)
}
function skip() {
	while (P <= N && is_skippable(L[P])) P++
}
# strips a trailing " # comment" from a plain scalar
function strip_comment(s,   i) {
	if (s ~ /^#/) return ""
	i = index(s, " #")
	if (i) s = substr(s, 1, i - 1)
	i = index(s, "\t#")
	if (i) s = substr(s, 1, i - 1)
	return rtrim(s)
}
# plain scalars: drop tags such as !!str and anchors &a
function strip_props(s) {
	while (s ~ /^(!|&)[^ ]*( |$)/) {
		sub(/^(!|&)[^ ]*/, "", s)
		s = ltrim(s)
	}
	return s
}
# Sets KEY and REST when s (already without indentation) is "key: rest".
function split_key(s,   q, i, c, k) {
	c = substr(s, 1, 1)
	if (c == "\"" || c == "'") {
		# quoted key
		i = 2
		k = ""
		while (i <= length(s)) {
			if (substr(s, i, 1) == c) {
				if (c == "'" && substr(s, i + 1, 1) == "'") { k = k "'"; i += 2; continue }
				break
			}
			if (c == "\"" && substr(s, i, 1) == "\\") { k = k substr(s, i, 2); i += 2; continue }
			k = k substr(s, i, 1)
			i++
		}
		if (i > length(s)) return 0
		q = substr(s, i + 1)
		if (q !~ /^[ \t]*:([ \t]|$)/) return 0
		KEY = (c == "\"") ? unescape_dq(k) : k
		sub(/^[ \t]*:/, "", q)
		REST = ltrim(q)
		return 1
	}
	if (c == "[" || c == "{" || c == "-" && substr(s, 2, 1) == " " || c == "#" || c == "|" || c == ">") return 0
	if (!match(s, /:([ \t]|$)/)) return 0
	k = substr(s, 1, RSTART - 1)
	if (k ~ /^[ \t]*$/) return 0
	KEY = rtrim(k)
	REST = ltrim(substr(s, RSTART + 1))
	return 1
}
function hexval(h,   i, v, c) {
	v = 0
	h = tolower(h)
	for (i = 1; i <= length(h); i++) {
		c = index("0123456789abcdef", substr(h, i, 1))
		if (!c) return -1
		v = v * 16 + c - 1
	}
	return v
}
function utf8(n) {
	if (n < 128) return sprintf("%c", n)
	if (n < 2048) return sprintf("%c%c", 192 + int(n / 64), 128 + n % 64)
	return sprintf("%c%c%c", 224 + int(n / 4096), 128 + int(n / 64) % 64, 128 + n % 64)
}
function unescape_dq(s,   out, i, c, n, v) {
	out = ""
	n = length(s)
	for (i = 1; i <= n; i++) {
		c = substr(s, i, 1)
		if (c != "\\") { out = out c; continue }
		i++
		c = substr(s, i, 1)
		if (c == "n") out = out "\n"
		else if (c == "t") out = out "\t"
		else if (c == "r") out = out "\r"
		else if (c == "b") out = out "\b"
		else if (c == "f") out = out "\f"
		else if (c == "0") out = out ""
		else if (c == "e") out = out "\033"
		else if (c == "u" || c == "x") {
			v = hexval(substr(s, i + 1, c == "u" ? 4 : 2))
			if (v < 0) { out = out "\\" c; continue }
			out = out utf8(v)
			i += (c == "u") ? 4 : 2
		} else out = out c   # \" \\ \/ and anything else
	}
	return out
}

# ---------------------------------------------------------------- flow / JSON
function fp_ws() {
	while (FI <= FN && index(" \t\n\r", substr(FS_S, FI, 1))) FI++
}
function fp_quoted(   q, c, s, start) {
	q = substr(FS_S, FI, 1)
	FI++
	s = ""
	QCLOSED = 0
	while (FI <= FN) {
		c = substr(FS_S, FI, 1)
		if (c == q) {
			if (q == "'" && substr(FS_S, FI + 1, 1) == "'") { s = s "'"; FI += 2; continue }
			FI++
			QCLOSED = 1
			break
		}
		if (q == "\"" && c == "\\") { s = s substr(FS_S, FI, 2); FI += 2; continue }
		s = s c
		FI++
	}
	return (q == "\"") ? unescape_dq(s) : s
}
function fp_plain(stops,   s, c) {
	s = ""
	while (FI <= FN) {
		c = substr(FS_S, FI, 1)
		if (index(stops, c)) break
		s = s c
		FI++
	}
	return trim(s)
}
function fp_value(path,   c, v) {
	fp_ws()
	c = substr(FS_S, FI, 1)
	if (c == "{") { fp_map(path); return }
	if (c == "[") { fp_seq(path); return }
	if (c == "\"" || c == "'") { emit(path, "s", fp_quoted()); return }
	v = fp_plain(",]}")
	if (v == "" || v == "null" || v == "~") emit(path, "n", "")
	else emit(path, "s", v)
}
function fp_map(path,   n, c, k) {
	FI++
	n = 0
	while (FI <= FN) {
		fp_ws()
		c = substr(FS_S, FI, 1)
		if (c == "}") { FI++; break }
		if (c == ",") { FI++; continue }
		if (c == "\"" || c == "'") k = fp_quoted()
		else k = fp_plain(":,}")
		fp_ws()
		if (substr(FS_S, FI, 1) == ":") {
			FI++
			emit(path, "k", k)
			fp_value(child(path, k))
		} else {
			emit(path, "k", k)
			emit(child(path, k), "n", "")
		}
		n++
	}
	emit(path, "m", n)
}
function fp_seq(path,   n, c) {
	FI++
	n = 0
	while (FI <= FN) {
		fp_ws()
		c = substr(FS_S, FI, 1)
		if (c == "]") { FI++; break }
		if (c == ",") { FI++; continue }
		fp_value(child(path, n))
		n++
	}
	emit(path, "l", n)
}
# does s (a flow collection text) have balanced brackets?
function balanced(s,   i, c, d, q) {
	d = 0
	q = ""
	for (i = 1; i <= length(s); i++) {
		c = substr(s, i, 1)
		if (q != "") {
			if (q == "\"" && c == "\\") { i++; continue }
			if (c == q) q = ""
			continue
		}
		if (c == "\"" || c == "'") q = c
		else if (c == "[" || c == "{") d++
		else if (c == "]" || c == "}") d--
	}
	return d <= 0
}
function parse_flow(path, s) {
	while (!balanced(s) && P <= N) { s = s "\n" L[P]; P++ }
	FS_S = s
	FN = length(s)
	FI = 1
	fp_value(path)
}

# ---------------------------------------------------------------- block YAML
# Parses the value text "rest" that followed "key:" or "- " on a line whose
# indentation is pind; P already points at the next line.
function parse_scalar_rest(path, rest, pind,   c, hdr, chomp, folded, lines, nl, i, bi, v, s, trail) {
	rest = strip_props(ltrim(rest))
	c = substr(rest, 1, 1)
	if (c == "|" || c == ">") {
		hdr = strip_comment(rest)
		folded = (c == ">")
		chomp = (hdr ~ /-/) ? "strip" : ((hdr ~ /\+/) ? "keep" : "clip")
		nl = 0
		bi = -1
		while (P <= N) {
			s = L[P]
			if (s ~ /^[ \t]*$/) { lines[++nl] = ""; P++; continue }
			if (indent_of(s) <= pind) break
			if (bi < 0) bi = indent_of(s)
			if (indent_of(s) < bi) break
			lines[++nl] = substr(s, bi + 1)
			P++
		}
		trail = 0
		while (nl > 0 && lines[nl] == "") { nl--; trail++ }
		v = ""
		for (i = 1; i <= nl; i++) {
			if (i == 1) v = lines[i]
			else if (!folded) v = v "\n" lines[i]
			else if (lines[i] == "") v = v "\n"
			else if (lines[i - 1] == "") v = v lines[i]
			else if (lines[i] ~ /^[ \t]/ || lines[i - 1] ~ /^[ \t]/) v = v "\n" lines[i]
			else v = v " " lines[i]
		}
		if (nl > 0 && chomp == "clip") v = v "\n"
		if (chomp == "keep") { v = v "\n"; for (i = 0; i < trail; i++) v = v "\n" }
		emit(path, "s", v)
		return
	}
	if (c == "[" || c == "{") { parse_flow(path, rest); return }
	if (c == "\"" || c == "'") {
		# quoted, possibly continued on following lines
		s = rest
		while (1) {
			FS_S = s; FN = length(s); FI = 1
			v = fp_quoted()
			if (QCLOSED || P > N) break
			s = s " " trim(L[P])
			P++
		}
		emit(path, "s", v)
		return
	}
	v = strip_comment(rest)
	# plain multi-line scalar continuation
	while (P <= N && !is_skippable(L[P]) && indent_of(L[P]) > pind) {
		v = v " " strip_comment(trim(L[P]))
		P++
	}
	if (v == "" || v == "~" || v == "null") emit(path, "n", "")
	else emit(path, "s", v)
}
function parse_node(path, minind,   ind, s) {
	skip()
	if (P > N) { emit(path, "n", ""); return }
	ind = indent_of(L[P])
	if (ind < minind) { emit(path, "n", ""); return }
	s = substr(L[P], ind + 1)
	if (s ~ /^-([ \t]|$)/) { parse_seq(path, ind); return }
	if (split_key(s)) { parse_map(path, ind); return }
	P++
	parse_scalar_rest(path, s, ind - 1)
}
function parse_value_after_key(path, rest, ind,   s, ni) {
	if (strip_comment(rest) == "" || rest ~ /^(!|&)[^ ]*[ \t]*$/) {
		skip()
		if (P <= N) {
			ni = indent_of(L[P])
			s = substr(L[P], ni + 1)
			if (ni > ind) { parse_node(path, ind + 1); return }
			if (ni == ind && s ~ /^-([ \t]|$)/) { parse_seq(path, ind); return }
		}
		emit(path, "n", "")
		return
	}
	parse_scalar_rest(path, rest, ind)
}
function parse_map(path, ind,   n, s, k, r) {
	n = 0
	while (1) {
		skip()
		if (P > N || indent_of(L[P]) != ind) break
		s = substr(L[P], ind + 1)
		if (!split_key(s)) break
		k = KEY
		r = REST
		P++
		emit(path, "k", k)
		parse_value_after_key(child(path, k), r, ind)
		n++
	}
	emit(path, "m", n)
}
function parse_seq(path, ind,   n, s, r, ni) {
	n = 0
	while (1) {
		skip()
		if (P > N || indent_of(L[P]) != ind) break
		s = substr(L[P], ind + 1)
		if (s !~ /^-([ \t]|$)/) break
		r = substr(s, 2)
		ni = ind + 1 + indent_of(r)
		r = ltrim(r)
		if (strip_comment(r) == "") {
			P++
			skip()
			if (P <= N && indent_of(L[P]) > ind) parse_node(child(path, n), ind + 1)
			else emit(child(path, n), "n", "")
		} else if (r ~ /^-([ \t]|$)/ || split_key(r)) {
			# nested sequence or map starting on the dash line
			L[P] = spaces(ni) r
			parse_node(child(path, n), ni)
		} else {
			P++
			parse_scalar_rest(child(path, n), r, ind)
		}
		n++
	}
	emit(path, "l", n)
}

{ sub(/\r$/, ""); L[++N] = $0 }
END {
	P = 1
	skip()
	if (P > N) { emit("", "n", ""); exit }
	s = ltrim(L[P])
	if (substr(s, 1, 1) == "{" || substr(s, 1, 1) == "[") {
		P++
		parse_flow("", s)
	} else
		parse_node("", 0)
}
