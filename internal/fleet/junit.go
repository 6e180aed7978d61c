package fleet

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"

	"github.com/mender-mtls/mtls-agent/internal/atomicfile"
)

// junitSuite is the JUnit XML that CI systems read: one suite, one test
// case per threshold.
type junitSuite struct {
	XMLName  xml.Name    `xml:"testsuite"`
	Name     string      `xml:"name,attr"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Time     string      `xml:"time,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	ClassName string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitFailure `xml:"failure,omitempty"`
}

type junitFailure struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report's threshold results as JUnit XML: a
// testsuite "simulator thresholds" with one testcase per threshold, a
// failed threshold carrying a <failure>.
func (r *Report) WriteJUnit(w io.Writer) error {
	s := junitSuite{Name: "simulator thresholds", Tests: len(r.Thresholds), Time: "0"}
	for _, t := range r.Thresholds {
		c := junitCase{Name: t.Expr, ClassName: "simulator.thresholds", Time: "0"}
		if !t.Pass {
			s.Failures++
			msg := "observed " + t.formatObserved() + ", limit " + t.Op + " " + formatInUnit(t.Metric, t.Limit)
			if t.Reason != "" {
				msg = t.Reason
			}
			c.Failure = &junitFailure{Message: msg, Type: "threshold", Text: t.Line()}
		}
		s.Cases = append(s.Cases, c)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(s); err != nil {
		return fmt.Errorf("encode JUnit XML: %w", err)
	}
	_, err := io.WriteString(w, "\n")
	return err
}

// SaveJUnit writes WriteJUnit's XML to path atomically.
func (r *Report) SaveJUnit(path string) error {
	var b bytes.Buffer
	if err := r.WriteJUnit(&b); err != nil {
		return err
	}
	if err := atomicfile.Write(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("save JUnit XML: %w", err)
	}
	return nil
}
