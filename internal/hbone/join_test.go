package hbone

import (
	"bytes"
	"io"
	"net"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// chunkReader returns one chunk per Read (cut to the buffer) and records
// the size of each buffer it is offered. It is not a socket, like an
// HTTP/2 stream.
type chunkReader struct {
	chunks  []int
	offered []int
}

func (r *chunkReader) Read(p []byte) (int, error) {
	r.offered = append(r.offered, len(p))
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := min(r.chunks[0], len(p))
	r.chunks = r.chunks[1:]
	return n, nil
}

func TestCopyBufferSizes(t *testing.T) {
	const small, big = smallBufferSize, bufferSize
	tests := []struct {
		name   string
		chunks []int
		want   []int // buffer size offered to each Read, the last one at EOF
	}{
		{"small reads stay small", []int{100, small - 1}, []int{small, small, small}},
		{"a read filling the small buffer grows it", []int{small, big}, []int{small, big, big}},
		{"full reads stay big", []int{small, big, big, big}, []int{small, big, big, big, big}},
		{"a read short of the big buffer shrinks it", []int{small, big, 10}, []int{small, big, big, small}},
		{"and it grows again", []int{small, 100, small, big}, []int{small, big, small, big, big}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &chunkReader{chunks: tt.chunks}
			n, err := copyAdaptive(io.Discard, r)
			if err != nil {
				t.Fatalf("copy: %v", err)
			}
			var total int64
			for _, c := range tt.chunks {
				total += int64(c)
			}
			if n != total {
				t.Errorf("bytes copied: got %d, want %d", n, total)
			}
			if diff := cmp.Diff(tt.want, r.offered); diff != "" {
				t.Errorf("buffer sizes offered (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCopyFromIdleTCP copies from a TCP connection that goes quiet
// between writes (the loop waits for it to become readable without a
// buffer) and then half-closes.
func TestCopyFromIdleTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	type result struct {
		n   int64
		err error
	}
	var got bytes.Buffer
	done := make(chan result, 1)
	pr, pw := io.Pipe()
	go func() {
		n, err := copyAdaptive(pw, server)
		pw.Close()
		done <- result{n, err}
	}()
	var want bytes.Buffer
	for i, size := range []int{1, 3 * bufferSize, 10, smallBufferSize} {
		msg := bytes.Repeat([]byte{byte('a' + i)}, size)
		want.Write(msg)
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		// Read it all on the other side before writing more, so that the
		// copy loop goes idle in between.
		if _, err := io.CopyN(&got, pr, int64(size)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	client.(*net.TCPConn).CloseWrite()
	if _, err := io.Copy(&got, pr); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil || r.n != int64(want.Len()) {
		t.Errorf("copy: got %d bytes, %v; want %d bytes, no error", r.n, r.err, want.Len())
	}
	if !bytes.Equal(got.Bytes(), want.Bytes()) {
		t.Errorf("copied bytes differ from those sent (got %d bytes, want %d)", got.Len(), want.Len())
	}
}
