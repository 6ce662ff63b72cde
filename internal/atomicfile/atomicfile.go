// Package atomicfile replaces files so that a crash leaves the old content
// or the new one, never a part of it.
package atomicfile

import "os"

// Write replaces path with what write puts in a temporary file beside it
// (PATH.tmp, mode 0600), then renames it over path. With durable, the
// content reaches the disk before the rename (fsync).
func Write(path string, durable bool, write func(f *os.File) error) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = write(f)
	if err == nil && durable {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
