package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// lockFileName is the daemon's lock file in the datastore directory. It
// holds the PID of the daemon that holds the lock.
const lockFileName = "device-agent.lock"

// lockRetry is how long lockDatastore keeps trying a held lock: long enough
// to ride out `device-agent status` probing it, short enough to fail fast.
const lockRetry = 300 * time.Millisecond

// datastoreLock is an exclusive flock(2) on the lock file: one daemon per
// datastore. The kernel releases it when the process exits, however it
// exits; the file itself stays (removing it would race with a starting
// daemon).
type datastoreLock struct {
	f    *os.File
	path string
}

// lockDatastore takes the datastore lock for pid, creating dir (0700) and
// the lock file when missing. When another process holds the lock, the
// error names its PID.
func lockDatastore(dir string, pid int) (*datastoreLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("datastore %s: %w (set --data or MENDER_DATASTORE_DIR to a writable directory)", dir, err)
	}
	path := filepath.Join(dir, lockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock file %s: %w", path, err)
	}
	deadline := time.Now().Add(lockRetry)
	for {
		err = flock(f, syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil || !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another device-agent daemon (PID %s) is running with the datastore %s (lock %s): stop it first (systemctl stop device-agent), or give this one its own --data DIR",
				readLockPID(path), dir, path)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, err = f.WriteAt([]byte(strconv.Itoa(pid)+"\n"), 0)
	}
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("lock file %s: write PID: %w", path, err)
	}
	return &datastoreLock{f: f, path: path}, nil
}

// Close releases the lock.
func (l *datastoreLock) Close() error { return l.f.Close() }

func flock(f *os.File, how int) error {
	for {
		err := syscall.Flock(int(f.Fd()), how)
		if !errors.Is(err, syscall.EINTR) {
			return err
		}
	}
}

// readLockPID returns the PID written in the lock file, "unknown" when
// there is none (yet).
func readLockPID(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	b, _ := io.ReadAll(io.LimitReader(f, 32))
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
		return strconv.Itoa(pid)
	}
	return "unknown"
}

// lockHolder reports whether a daemon holds the datastore lock in dir, and
// its PID. It only probes: a free lock is released at once.
func lockHolder(dir string) (running bool, pid string, err error) {
	path := filepath.Join(dir, lockFileName)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, "", nil
	}
	if err != nil {
		return false, "", fmt.Errorf("lock file %s: %w", path, err)
	}
	defer f.Close()
	err = flock(f, syscall.LOCK_SH|syscall.LOCK_NB)
	switch {
	case err == nil:
		_ = flock(f, syscall.LOCK_UN)
		return false, "", nil
	case errors.Is(err, syscall.EWOULDBLOCK):
		return true, readLockPID(path), nil
	}
	return false, "", fmt.Errorf("lock file %s: %w", path, err)
}
