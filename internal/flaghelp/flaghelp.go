// Package flaghelp renders a command's help and flag errors the way this
// project's commands print them: flags spelled --flag, each with the
// placeholder its usage text names (the back-quoted word), and defaults
// shown only when they are not the zero value. device-agent and simulator
// both use it, so their help reads the same.
package flaghelp

import (
	"flag"
	"fmt"
	"io"
	"strings"
)

// Write writes "Usage: usage", the synopsis and the flags of fs to w.
// hidden, when not nil, keeps the flags it reports true out of the list
// (deprecated aliases).
func Write(w io.Writer, usage, synopsis string, fs *flag.FlagSet, hidden func(name string) bool) {
	fmt.Fprintf(w, "Usage: %s\n\n%s\n", usage, strings.TrimRight(synopsis, "\n"))
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if hidden != nil && hidden(f.Name) {
			return
		}
		name, text := flag.UnquoteUsage(f)
		fmt.Fprintf(&b, "  --%s", f.Name)
		if name != "" {
			fmt.Fprintf(&b, " %s", name)
		}
		b.WriteString("\n")
		text = strings.ReplaceAll(text, "\n", "\n        ")
		if def := defaultText(f); def != "" {
			text += " (default " + def + ")"
		}
		fmt.Fprintf(&b, "        %s\n", text)
	})
	if b.Len() > 0 {
		fmt.Fprintf(w, "\nFlags:\n%s", b.String())
	}
}

// defaultText is the default shown in the help: "" for a zero default,
// quoted for a string flag.
func defaultText(f *flag.Flag) string {
	switch f.DefValue {
	case "", "0", "false", "0s", "[]":
		return ""
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isString := g.Get().(string); isString {
			return fmt.Sprintf("%q", f.DefValue)
		}
	}
	return f.DefValue
}

// Error returns a flag package parse error with its flag names spelled
// --name, as the help spells them: a "-" that starts the text or follows a
// space or colon and is followed by a letter gets a second "-". (A plain
// scan rather than a regexp keeps package regexp, about 100 kB, out of the
// agent binary.)
func Error(err error) string {
	msg := err.Error()
	var b strings.Builder
	for i := 0; i < len(msg); i++ {
		c := msg[i]
		b.WriteByte(c)
		if c != '-' || i+1 >= len(msg) || !isLetter(msg[i+1]) {
			continue
		}
		if i == 0 || msg[i-1] == ':' || isSpace(msg[i-1]) {
			b.WriteByte('-')
		}
	}
	return b.String()
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func isSpace(c byte) bool {
	switch c {
	case ' ', '\t', '\n', '\r', '\v', '\f':
		return true
	}
	return false
}
