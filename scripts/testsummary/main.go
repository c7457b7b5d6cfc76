// Command testsummary reads `go test -json` on stdin and prints what plain
// `go test` prints (each package's ok/FAIL line, the output of failed tests),
// then which tests skipped and why, so a machine without PostgreSQL, Node or
// Chromium cannot pass `make test` by silently skipping. It exits 1 when a
// test or a build failed. scripts/test.sh runs it.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of go test -json (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type skipped struct{ test, reason string }

func main() {
	os.Exit(run(os.Stdin, os.Stdout))
}

func run(in io.Reader, out io.Writer) int {
	buffers := map[string][]string{} // output of running tests, by package and test
	var skips []skipped
	failed := false
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Action == "" {
			fmt.Fprintln(out, sc.Text()) // not JSON: go's own message, passed on
			continue
		}
		key := e.Package + " " + e.Test
		switch e.Action {
		case "build-output":
			fmt.Fprint(out, e.Output)
		case "build-fail":
			failed = true
		case "output":
			if e.Test == "" {
				if e.Output != "PASS\n" && !strings.HasPrefix(e.Output, "=== ") {
					fmt.Fprint(out, e.Output)
				}
				continue
			}
			buffers[key] = append(buffers[key], e.Output)
		case "fail":
			if e.Test == "" {
				failed = true
				continue
			}
			for _, line := range buffers[key] {
				if !strings.HasPrefix(line, "=== ") {
					fmt.Fprint(out, line)
				}
			}
			delete(buffers, key)
		case "skip":
			if e.Test != "" {
				skips = append(skips, skipped{test: e.Test, reason: skipReason(buffers[key])})
			}
			delete(buffers, key)
		case "pass":
			delete(buffers, key)
		}
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(out, "testsummary:", err)
		failed = true
	}
	summarize(out, skips)
	if failed {
		return 1
	}
	return 0
}

// skipReason is the last line a skipped test logged (its t.Skip message).
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "=== ") && !strings.HasPrefix(l, "--- ") {
			return l
		}
	}
	return "(no reason given)"
}

// summarize prints the skipped tests grouped by reason, or says none skipped.
func summarize(out io.Writer, skips []skipped) {
	if len(skips) == 0 {
		fmt.Fprintln(out, "SKIPPED: none")
		return
	}
	byReason := map[string][]string{}
	for _, s := range skips {
		byReason[s.reason] = append(byReason[s.reason], s.test)
	}
	reasons := make([]string, 0, len(byReason))
	for r := range byReason {
		reasons = append(reasons, r)
	}
	sort.Slice(reasons, func(i, j int) bool {
		if a, b := len(byReason[reasons[i]]), len(byReason[reasons[j]]); a != b {
			return a > b
		}
		return reasons[i] < reasons[j]
	})
	plural := "s"
	if len(skips) == 1 {
		plural = ""
	}
	fmt.Fprintf(out, "SKIPPED: %d test%s did not run here (CI sets ATL_REQUIRE_DB, ATL_REQUIRE_NODE and ATL_REQUIRE_BROWSER, which fail them instead):\n",
		len(skips), plural)
	for _, r := range reasons {
		tests := byReason[r]
		sort.Strings(tests)
		shown := tests
		more := ""
		if len(tests) > 6 {
			shown, more = tests[:6], fmt.Sprintf(" and %d more", len(tests)-6)
		}
		fmt.Fprintf(out, "  %d: %s\n     %s%s\n", len(tests), r, strings.Join(shown, ", "), more)
	}
}
