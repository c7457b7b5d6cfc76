//go:build !unix

package jsonl

import (
	"os"
	"path/filepath"
)

const lockFileName = "atl.lock"

// lockDataDir cannot flock here: the directory is opened unlocked, and it is
// the operator's task to run one process on it.
func lockDataDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, lockFileName), os.O_RDWR|os.O_CREATE, 0o600)
}
