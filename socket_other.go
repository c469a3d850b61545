//go:build !unix

package sss

import "errors"

// Elsewhere the reader waits inside coder/websocket, as it reads.
const readFDSupported = false

var errWouldBlock = errors.New("sss: would block")

func readFD(fd uintptr, p []byte) (int, error) { return 0, errWouldBlock }
