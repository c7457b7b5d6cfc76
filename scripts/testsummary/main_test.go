package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSummaryOfARealRun runs go test -json on a small module whose tests pass,
// skip and fail, and checks the filtered output: go test's closing lines, the
// failure's output, and every skip with its reason.
func TestSummaryOfARealRun(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name, content string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600))
	}
	write("go.mod", "module example.com/sample\n\ngo 1.21\n")
	write("sample_test.go", `package sample

import "testing"

func TestPasses(t *testing.T) { t.Log("quiet when passing") }

func TestNeedsNode(t *testing.T) { t.Skip("no npm or node_modules; run .ci/setup-node.sh") }

func TestBothStores(t *testing.T) {
	for _, kind := range []string{"postgres", "jsonl"} {
		t.Run(kind, func(t *testing.T) {
			if kind == "postgres" {
				t.Skip("no PostgreSQL at 127.0.0.1:5432")
			}
		})
	}
}

func TestFails(t *testing.T) { t.Error("the answer was 500") }
`)
	cmd := exec.Command("go", "test", "-json", "-count=1", "./...")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var out strings.Builder
	code := run(stdout, &out)
	_ = cmd.Wait()
	got := out.String()

	require.Equal(t, 1, code, got)
	require.Contains(t, got, "--- FAIL: TestFails")
	require.Contains(t, got, "the answer was 500")
	require.Contains(t, got, "FAIL\texample.com/sample")
	require.NotContains(t, got, "quiet when passing")
	require.NotContains(t, got, "=== RUN")
	require.Contains(t, got, "SKIPPED: 2 tests did not run here")
	require.Contains(t, got, "no npm or node_modules; run .ci/setup-node.sh")
	require.Contains(t, got, "TestNeedsNode")
	require.Contains(t, got, "no PostgreSQL at 127.0.0.1:5432")
	require.Contains(t, got, "TestBothStores/postgres")
	require.Greater(t, strings.Index(got, "SKIPPED"), strings.Index(got, "FAIL\texample.com/sample"), "the summary closes the output")
}

// TestSummaryWhenAllRan: a passing run keeps go test's ok line and says nothing skipped.
func TestSummaryWhenAllRan(t *testing.T) {
	t.Parallel()
	in := strings.Join([]string{
		`{"Action":"start","Package":"example.com/a"}`,
		`{"Action":"run","Package":"example.com/a","Test":"TestX"}`,
		`{"Action":"output","Package":"example.com/a","Test":"TestX","Output":"=== RUN   TestX\n"}`,
		`{"Action":"output","Package":"example.com/a","Test":"TestX","Output":"--- PASS: TestX (0.00s)\n"}`,
		`{"Action":"pass","Package":"example.com/a","Test":"TestX"}`,
		`{"Action":"output","Package":"example.com/a","Output":"PASS\n"}`,
		`{"Action":"output","Package":"example.com/a","Output":"ok  \texample.com/a\t0.01s\n"}`,
		`{"Action":"pass","Package":"example.com/a"}`,
	}, "\n")
	var out strings.Builder
	require.Equal(t, 0, run(strings.NewReader(in), &out))
	require.Equal(t, "ok  \texample.com/a\t0.01s\nSKIPPED: none\n", out.String())
}
