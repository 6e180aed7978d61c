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
	"regexp"
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

// flagRefRE finds flag names as the flag package writes them in errors
// ("-name").
var flagRefRE = regexp.MustCompile(`(^|[\s:])-([a-zA-Z][a-zA-Z0-9-]*)`)

// Error returns a flag package parse error with its flag names spelled
// --name, as the help spells them.
func Error(err error) string { return flagRefRE.ReplaceAllString(err.Error(), "$1--$2") }
