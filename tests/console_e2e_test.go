package tests

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/asi-labs/atl/internal/atlproc"
)

// chromiumPath is Debian's Chromium, which the browser tests drive.
const chromiumPath = "/usr/bin/chromium"

// TestConsoleInBrowser runs the Playwright tests under e2e/ with Node's test
// runner against the real binary on a fresh database. Without node_modules
// or Chromium it skips, unless ATL_REQUIRE_BROWSER=1 (set by .ci/run).
func TestConsoleInBrowser(t *testing.T) {
	missing := ""
	if _, err := os.Stat(filepath.Join("..", "e2e", "node_modules", "playwright-core")); err != nil {
		missing = "e2e/node_modules (run npm ci in e2e/)"
	} else if _, err := os.Stat(chromiumPath); err != nil {
		missing = chromiumPath + " (apt-get install chromium)"
	} else if _, err := exec.LookPath("node"); err != nil {
		missing = "node"
	}
	if missing != "" {
		if os.Getenv("ATL_REQUIRE_BROWSER") == "1" {
			t.Fatalf("the browser tests need %s (ATL_REQUIRE_BROWSER=1)", missing)
		}
		t.Skipf("no %s: browser tests skipped", missing)
	}
	url := newDatabase(t)
	atl := atlproc.Start(t, "DATABASE_URL="+url)
	// Screenshots go to e2e/screenshots (ignored by git); `make screenshots` points this at docs/screenshots for the README.
	shots := os.Getenv("ATL_SCREENSHOT_DIR")
	if shots == "" {
		shots = filepath.Join("..", "e2e", "screenshots")
	}
	shots, err := filepath.Abs(shots)
	if err == nil {
		err = os.MkdirAll(shots, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "--test", "--test-reporter=spec")
	cmd.Dir = filepath.Join("..", "e2e")
	cmd.Env = append(os.Environ(), "ATL_URL="+atl.Base, "ATL_ADMIN_TOKEN="+testOperatorToken,
		"ATL_SCREENSHOT_DIR="+shots, "CHROMIUM="+chromiumPath)
	cmd.WaitDelay = 10 * time.Second
	out, err := cmd.CombinedOutput()
	t.Logf("node --test e2e/:\n%s", out)
	if err != nil {
		t.Fatalf("browser tests failed: %v\nservice log:\n%s", err, atl.Output())
	}
}
