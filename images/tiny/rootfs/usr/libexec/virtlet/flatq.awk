# flatq.awk: queries over the output of yaml2flat.awk (one process for many
# lookups: process start-up is the expensive part under emulation).
#   -v m=vars -v q="var=path var2=path#"  -> shell assignments var='value'
#        (a scalar's value; "path#" is the item count of a list, "path?" is
#        the node type s/l/m/n; missing nodes give '')
#   -v m=values -v p=PATH  -> a scalar, or the scalar items of a list / values
#        of a map, decoded, one a line
#   -v m=pairs -v p=PATH  -> "key=value" for each scalar of map PATH, one a line
#   -v m=items -v p=PATH -v f="a b c" -> for each item of list PATH a line
#        "index US a US b US c" (US = \037) (values still escaped, as yaml2flat writes)
#   -v m=commands -v p=PATH -> the list as shell script lines (a string item
#        as is, a list item as a quoted argv)
#   -v m=get -v p=PATH -> a scalar value, still escaped (decode with printf %b)
BEGIN { FS = "\t" }
function unesc(s,   out, i, c, n) {
	if (index(s, "\\") == 0) return s
	out = ""
	n = length(s)
	for (i = 1; i <= n; i++) {
		c = substr(s, i, 1)
		if (c == "\\") {
			i++
			c = substr(s, i, 1)
			if (c == "n") c = "\n"
			else if (c == "t") c = "\t"
		}
		out = out c
	}
	return out
}
function shq(s,   out, i) {
	out = ""
	while ((i = index(s, "'")) > 0) {
		out = out substr(s, 1, i - 1) "'\\''"
		s = substr(s, i + 1)
	}
	return "'" out s "'"
}
{
	if ($2 == "k") { key[$1, ++nk[$1]] = $3; next }
	type[$1] = $2
	val[$1] = $3
}
function child(p, k) { return p == "" ? k : p "." k }
END {
	if (m == "vars") {
		n = split(q, a, " ")
		for (i = 1; i <= n; i++) {
			e = index(a[i], "=")
			var = substr(a[i], 1, e - 1)
			path = substr(a[i], e + 1)
			if (path ~ /#$/) {
				path = substr(path, 1, length(path) - 1)
				v = (type[path] == "l") ? val[path] : 0
			} else if (path ~ /\?$/) {
				v = type[substr(path, 1, length(path) - 1)]
			} else
				v = (type[path] == "s") ? unesc(val[path]) : ""
			print var "=" shq(v)
		}
	} else if (m == "values") {
		if (type[p] == "s") print unesc(val[p])
		else if (type[p] == "l") {
			for (i = 0; i < val[p] + 0; i++)
				if (type[child(p, i)] == "s") print unesc(val[child(p, i)])
		} else if (type[p] == "m") {
			for (i = 1; i <= nk[p]; i++)
				if (type[child(p, key[p, i])] == "s") print unesc(val[child(p, key[p, i])])
		}
	} else if (m == "pairs") {
		for (i = 1; i <= nk[p] && type[p] == "m"; i++)
			if (type[child(p, key[p, i])] == "s") print key[p, i] "=" unesc(val[child(p, key[p, i])])
	} else if (m == "items") {
		nf = split(f, fl, " ")
		for (i = 0; i < val[p] + 0 && type[p] == "l"; i++) {
			line = i
			for (j = 1; j <= nf; j++) {
				c = child(child(p, i), fl[j])
				line = line "\037" (type[c] == "s" ? val[c] : "")
			}
			print line
		}
	} else if (m == "commands") {
		for (i = 0; i < val[p] + 0 && type[p] == "l"; i++) {
			c = child(p, i)
			if (type[c] == "s") print unesc(val[c])
			else if (type[c] == "l") {
				line = ""
				for (j = 0; j < val[c] + 0; j++)
					line = line (j ? " " : "") shq(unesc(val[child(c, j)]))
				print line
			}
		}
	} else if (m == "get") {
		if (type[p] != "s") exit 1
		print val[p]
	}
}
