package waypoint

import (
	"errors"
	"strings"

	"github.com/ambitmesh/ambit/waypoint/config"
)

var errEscapedSlash = errors.New("escaped slash in path")

// normalizePath applies the connection manager's path handling to a
// request target's path, as Envoy does before routing and RBAC (so that
// "/a/../admin" and "/%61dmin" meet the rules for "/admin"): escaped
// slashes rejected or unescaped, RFC 3986 normalisation (unreserved
// percent-encodings decoded, other ones upper-cased, dot segments
// removed), merged slashes. The query is left alone.
func normalizePath(h *config.HCM, uri string) (string, error) {
	if !h.NormalizePath && !h.MergeSlashes && !h.RejectEscapedSlashes && !h.UnescapeSlashes {
		return uri, nil
	}
	path, query, hasQuery := strings.Cut(uri, "?")
	if !strings.HasPrefix(path, "/") {
		return uri, nil // absolute-form or "*": left to routing
	}
	lower := strings.ToLower(path)
	if h.RejectEscapedSlashes && (strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c")) {
		return "", errEscapedSlash
	}
	if h.UnescapeSlashes {
		path = replaceFold(replaceFold(path, "%2f", "/"), "%5c", "\\")
	}
	if h.NormalizePath {
		path = removeDotSegments(decodeUnreserved(strings.ReplaceAll(path, "\\", "/")))
	}
	if h.MergeSlashes {
		for strings.Contains(path, "//") {
			path = strings.ReplaceAll(path, "//", "/")
		}
	}
	if hasQuery {
		return path + "?" + query, nil
	}
	return path, nil
}

func replaceFold(s, old, new string) string {
	var b strings.Builder
	for {
		i := strings.Index(strings.ToLower(s), old)
		if i < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:i])
		b.WriteString(new)
		s = s[i+len(old):]
	}
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// decodeUnreserved decodes percent-encoded unreserved characters and
// upper-cases the hex digits of the others (RFC 3986 section 6.2.2).
func decodeUnreserved(p string) string {
	if !strings.Contains(p, "%") {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) {
			hi, ok1 := unhex(p[i+1])
			lo, ok2 := unhex(p[i+2])
			if ok1 && ok2 {
				c := hi<<4 | lo
				if unreserved(c) {
					b.WriteByte(c)
				} else {
					b.WriteString(strings.ToUpper(p[i : i+3]))
				}
				i += 2
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// removeDotSegments is RFC 3986 section 5.2.4 on an absolute path.
func removeDotSegments(p string) string {
	if !strings.Contains(p, "/.") {
		return p // no segment begins with a dot: nothing to remove
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}
