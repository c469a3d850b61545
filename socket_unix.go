//go:build unix

package sss

import (
	"errors"
	"io"
	"os"
	"syscall"
)

const readFDSupported = true

// errWouldBlock: nothing to read yet; wait for the descriptor.
var errWouldBlock = errors.New("sss: would block")

// readFD reads from a non-blocking descriptor as net.Conn.Read does.
func readFD(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, errWouldBlock
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}
