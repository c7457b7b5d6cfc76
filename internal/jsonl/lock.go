//go:build unix

package jsonl

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// lockFileName is the file in the JSONL directory whose flock marks its one
// owning process; it holds that process's pid and host.
const lockFileName = "atl.lock"

type lockHolder struct {
	PID   int       `json:"pid"`
	Host  string    `json:"host"`
	Since time.Time `json:"since"`
}

// lockDataDir takes the directory's exclusive lock: two processes appending to
// one trail would each extend the hash chain from their own head and fork it.
// The lock goes when the returned file is closed, or the process dies.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data dir lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		defer f.Close()
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data dir lock %s: %w", path, err)
		}
		holder := "another process"
		var h lockHolder
		if b, rerr := io.ReadAll(io.LimitReader(f, 4096)); rerr == nil && json.Unmarshal(b, &h) == nil && h.PID > 0 {
			holder = fmt.Sprintf("pid %d on host %s, since %s", h.PID, h.Host, h.Since.Format(time.RFC3339))
		}
		return nil, fmt.Errorf("data directory %s is in use by another ATL (%s): JSONL mode allows one process per directory; "+
			"stop that one, set another ATL_DATA_DIR, or run replicas on PostgreSQL (DATABASE_URL)", dir, holder)
	}
	host, _ := os.Hostname()
	b, _ := json.Marshal(lockHolder{PID: os.Getpid(), Host: host, Since: time.Now().UTC().Truncate(time.Second)})
	// The note is for whoever meets the lock next; the flock alone is the lock.
	_ = f.Truncate(0)
	_, _ = f.WriteAt(append(b, '\n'), 0)
	return f, nil
}
